"""The bundled tiny InternVL: deterministic, round-trips through save/load, and can learn."""

import json
import random

import pytest
import torch
from PIL import Image

from dreamprm.batching import ExampleBuilder, collate, load_rgb
from dreamprm.prm import ProcessRewardModel
from dreamprm.prompt import candidate_conversation, label_token_ids
from dreamprm.tiny import build_tiny


def _scores(prm, image):
    builder = ExampleBuilder(prm.processor, 6)
    item = builder.build(candidate_conversation("What colour?", ["Look.", "It is red."]), image)
    with torch.no_grad():
        return prm(**collate([item], 0).model_inputs()).log_p_plus


def test_tiny_is_native_internvl_with_its_own_tokenizer(tiny_dir, tiny_prm):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "internvl"
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert (tiny_dir / "model.safetensors").stat().st_size < 5_000_000
    tok = tiny_prm.processor.tokenizer
    plus, minus = label_token_ids(tok)
    assert plus != minus
    for special in ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert list(tiny_prm.processor.image_processor.image_mean) == [0.485, 0.456, 0.406]  # ImageNet


def test_build_is_deterministic(tmp_path, tiny_dir):
    again = build_tiny(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_prm):
    image = Image.new("RGB", (90, 60), (10, 200, 40))
    tiny_prm.save_pretrained(tmp_path / "copy")
    reloaded = ProcessRewardModel.from_pretrained(tmp_path / "copy", precision="fp32").eval()
    assert torch.equal(_scores(tiny_prm, image), _scores(reloaded, image))
    for (name, a), (_, b) in zip(tiny_prm.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def _colour_records(folder, prefix, n, seed):
    """Label of every step = is the picture red? A rule only the image can decide."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        red = rng.random() < 0.5
        size = (rng.randint(20, 90), rng.randint(20, 90))
        colour = (215, 35, 30) if red else (30, 45, 215)
        name = f"{prefix}_{i}.png"
        Image.new("RGB", size, colour).save(folder / name)
        step = rng.choice(["Look at the picture.", "Check the colour.", "It is warm."])
        conv = [{"from": "human", "value": "### Question:\nIs the picture red?"},
                {"from": "human", "value": step}, {"from": "gpt", "value": "+" if red else "-"}]
        records.append({"id": f"{prefix}{i}", "image": name, "conversations": conv, "red": red})
    (folder / f"{prefix}.json").write_text(json.dumps(records))
    return records


@pytest.mark.slow
def test_sft_learns_an_image_dependent_rule(tmp_path, tiny_dir):
    """Cold-start SFT through train.py reaches >= 95 % step accuracy well within 1,000 CPU iterations."""
    import train

    _colour_records(tmp_path, "train", 200, seed=0)
    held_out = _colour_records(tmp_path, "eval", 40, seed=1)
    out = tmp_path / "sft"
    code = train.main([
        "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--retrain", "1",
        "--train_json_file", str(tmp_path / "train.json"), "--weights_path", str(out),
        "--iteration_num", "300", "--save_every_iterations", "300", "--lr", "3e-3", "--batch_size", "4",
        "--max_patch_num", "1", "--no_progress", "--figs_dir", str(tmp_path / "figs"),
    ])
    assert code == 0
    prm = ProcessRewardModel.from_pretrained(out, precision="fp32").eval()
    builder = ExampleBuilder(prm.processor, 1)
    correct = total = 0
    for rec in held_out:  # scored the way test.py scores: "+" placeholders, two steps
        item = builder.build(candidate_conversation("Is the picture red?", ["Look.", "Check the colour."]),
                             load_rgb(tmp_path / rec["image"]))
        with torch.no_grad():
            out_steps = prm(**collate([item], 0).model_inputs())
        said_plus = out_steps.p_plus > out_steps.p_minus
        correct += int((said_plus == rec["red"]).sum())
        total += said_plus.numel()
    assert correct / total >= 0.95
