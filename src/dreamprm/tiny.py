"""The bundled tiny InternVL: same architecture as InternVL3-1B, a few MB, built from code.

No machine the tests run on can reach a model hub, so the tests and the offline demo use a
tiny model generated deterministically here: the native transformers InternVL (InternViT
vision tower, pixel-shuffle projector, Qwen2 language model) at toy sizes, with its own
byte-level tokenizer that carries the ChatML and image special tokens. It is written with
``save_pretrained`` and read back by the same ``from_pretrained`` path a real checkpoint
takes, so every code path the tiny model exercises is the one a real checkpoint uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_NAME = "tiny"
TINY_VERSION = "v2"

# Tile side and patch size of the tiny vision tower: (56 / 14)^2 * 0.5^2 = 4 tokens per tile.
TINY_TILE = 56
TINY_PATCH = 14
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
]


def default_tiny_dir() -> Path:
    """Where the tiny model is cached: $DREAMPRM_TINY_DIR, else ~/.cache/dreamprm/."""
    env = os.environ.get("DREAMPRM_TINY_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dreamprm" / f"tiny-internvl-{TINY_VERSION}"


# The tokenizer learns its merges from this fixed text, so the PRM system prompt and the
# usual chat scaffolding take ~200 tokens instead of ~1,000 raw bytes (faster tests, demo).
_MERGE_CORPUS = (
    "<|im_start|>system\n",
    "<|im_start|>user\n### Question:\nWhat is the colour of the shape in the image?",
    "<|im_start|>assistant\n",
    "Step 1: Let me look at the image. The answer is red, blue, green or yellow. Therefore, so the",
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tiny_tokenizer():
    """A small byte-level BPE with Qwen2-style pre-tokenisation and the InternVL special tokens.

    Every byte is in the base alphabet, so any text encodes; ``+`` and ``-`` are single tokens.
    BPE training on a fixed corpus is deterministic.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .prompt import SYSTEM_PROMPT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator([SYSTEM_PROMPT, *_MERGE_CORPUS], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    fast.model_max_length = 32768
    return fast


def build_tiny_config(vocab_size: int, image_token_id: int, vision_layers: int = 2, text_layers: int = 2):
    """The tiny widths; the depths are parameters (the host-overhead benchmark uses 24 + 24)."""
    from transformers import InternVLConfig

    vision = dict(
        hidden_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=TINY_TILE,
        patch_size=TINY_PATCH,
        attention_bias=True,
        layer_scale_init_value=0.1,
        use_mean_pooling=True,
    )
    text = dict(
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
    )
    seq = (TINY_TILE // TINY_PATCH) ** 2 // 4
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=seq,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def build_tiny(path: str | os.PathLike, seed: int = 0) -> Path:
    """Generate the tiny model + processor deterministically and save them to ``path``."""
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = build_tiny_config(len(tokenizer), image_token_id)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessor(
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        size={"height": TINY_TILE, "width": TINY_TILE},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(
            size={"height": TINY_TILE, "width": TINY_TILE}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        ),
        image_seq_length=config.image_seq_length,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def ensure_tiny(path: str | os.PathLike | None = None) -> Path:
    """Return the folder of the tiny model, building it (atomically) on first use."""
    target = Path(path) if path is not None else default_tiny_dir()
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: keep its copy
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
