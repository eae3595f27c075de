"""The PRM reads step probabilities at label positions only, equal to the full computation."""

import shutil

import pytest
import torch
from PIL import Image

from dreamprm.batching import ExampleBuilder, collate
from dreamprm.prompt import candidate_conversation


def _batch(prm, max_patch_num=6):
    builder = ExampleBuilder(prm.processor, max_patch_num)
    wide = Image.new("RGB", (150, 40), (200, 30, 30))
    tall = Image.new("RGB", (30, 120), (20, 30, 200))
    items = [
        builder.build(candidate_conversation("What colour?", ["It is red.", "Answer: red"]), wide),
        builder.build(candidate_conversation("Which colour is shown here?", ["Blue.", "Sure.", "Answer: blue"]), tall),
    ]
    return collate(items, prm.processor.tokenizer.pad_token_id)


def test_padding_does_not_change_a_candidates_scores(tiny_prm):
    batch = _batch(tiny_prm)
    builder = ExampleBuilder(tiny_prm.processor, 6)
    alone = collate([builder.build(candidate_conversation("What colour?", ["It is red.", "Answer: red"]),
                                   Image.new("RGB", (150, 40), (200, 30, 30)))], 0)
    with torch.no_grad():
        together = tiny_prm(**batch.model_inputs()).p_plus[:2]
        single = tiny_prm(**alone.model_inputs()).p_plus
    torch.testing.assert_close(together, single, atol=1e-5, rtol=0)


def test_image_tiles_follow_max_patch_num(tiny_prm):
    builder = ExampleBuilder(tiny_prm.processor, 6)
    # 150x40 at 6 tiles -> a 4x1 grid (closest ratio), plus a thumbnail
    assert builder.pixel_values(Image.new("RGB", (150, 40))).shape == (5, 3, 56, 56)
    builder.max_patch_num = 1
    assert builder.pixel_values(Image.new("RGB", (150, 40))).shape == (1, 3, 56, 56)


def test_reference_full_vocab_path_gives_the_same_outputs(tiny_prm, tiny_dir):
    """The PRM's forward (LM head at the label positions) against bench/reference.py's full
    computation (LM head and softmax at every position), as a function and as a PRM class."""
    from bench.reference import ReferenceProcessRewardModel, reference_step_outputs

    batch = _batch(tiny_prm)
    reference_prm = ReferenceProcessRewardModel.from_pretrained(tiny_dir, device="cpu", precision="fp32").eval()
    head_rows = []  # positions the LM head ran at, per call
    hook = tiny_prm.model.lm_head.register_forward_hook(
        lambda _module, inputs, _out: head_rows.append(inputs[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            fast = tiny_prm(**batch.model_inputs())
            ref = reference_step_outputs(tiny_prm, **batch.model_inputs())
    finally:
        hook.remove()
    with torch.no_grad():
        ref_class = reference_prm(**batch.model_inputs())
    assert head_rows == [5, batch.input_ids.numel()]  # ours: the label positions; reference: every position
    assert ref.log_p_plus.shape == fast.log_p_plus.shape == (5,)
    for name in ("logit_plus", "logit_minus", "log_p_plus", "log_p_minus"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-5, rtol=0)
        assert torch.equal(getattr(ref_class, name), getattr(ref, name)), name  # the same computation
    assert fast.batch_index.tolist() == ref.batch_index.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler on CPU")
def test_compiled_layers_give_the_eager_probabilities_and_gradients(tiny_dir):
    """--compile (regional torch.compile) changes kernels, not results: outputs and parameter
    gradients match eager to float tolerance, across two sequence lengths (dynamic shapes)."""
    from torch._dynamo.utils import counters

    from dreamprm.prm import ProcessRewardModel

    eager = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    compiled = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    compiled.compile_layers()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    batch = _batch(eager)
    short = _batch(eager, max_patch_num=1)
    assert short.input_ids.shape[1] != batch.input_ids.shape[1]
    graphs_before = counters["stats"]["unique_graphs"]
    for b in (batch, short):
        outs = []
        for prm in (eager, compiled):
            prm.zero_grad()
            out = prm(**b.model_inputs())
            out.log_p_plus.sum().backward()
            outs.append((out.log_p_plus.detach(), {n: p.grad.clone() for n, p in prm.named_parameters()
                                                   if p.grad is not None}))
        (ref, ref_grads), (got, got_grads) = outs
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert ref_grads.keys() == got_grads.keys() and len(ref_grads) > 10
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the layers really ran compiled


def test_step_probabilities_build_no_kv_cache(tiny_prm, monkeypatch):
    """Training and scoring forwards read every position once: no cache layer is ever updated."""
    from transformers import cache_utils

    updates = []
    original = cache_utils.DynamicLayer.update
    monkeypatch.setattr(cache_utils.DynamicLayer, "update", lambda self, *a, **k: (updates.append(1), original(self, *a, **k))[1])
    batch = _batch(tiny_prm)
    tiny_prm(**batch.model_inputs()).log_p_plus.sum().backward()
    assert updates == []
    tiny_prm.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values, use_cache=True)
    assert len(updates) == tiny_prm.model.config.text_config.num_hidden_layers  # the opt-in still works


# ------------------------------------------------------------ chat-layout checkpoints, load errors
@pytest.fixture(scope="module")
def chat_and_native(tiny_dir, tmp_path_factory):
    """The tiny model in InternVL's chat layout (written by the converter) and the native folder
    the converter makes of that chat folder."""
    from dreamprm.convert import convert

    root = tmp_path_factory.mktemp("layouts")
    chat = convert(tiny_dir, root / "chat", direction="to_chat")
    native = convert(chat, root / "native", direction="to_hf")
    return chat, native


def _tree(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


def test_chat_layout_folder_loads_in_memory_with_the_converted_scores(chat_and_native, capsys):
    from dreamprm.prm import ProcessRewardModel
    from dreamprm.scoring import load_scorer

    chat, native = chat_and_native
    before, siblings = _tree(chat), sorted(p.name for p in chat.parent.iterdir())
    capsys.readouterr()
    from_chat = ProcessRewardModel.from_pretrained(chat).eval()
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("note:")] == [
        f"note: {chat} is in InternVL's chat layout; converted in memory (write a native copy once with: "
        f"python -m dreamprm.convert {chat} {chat}-hf)"]
    from_native = ProcessRewardModel.from_pretrained(native).eval()
    assert _tree(chat) == before and sorted(p.name for p in chat.parent.iterdir()) == siblings  # nothing written
    assert from_chat.model.config.image_token_id == from_native.model.config.image_token_id

    batch = _batch(from_native)
    with torch.no_grad():
        a, b = from_chat(**batch.model_inputs()), from_native(**batch.model_inputs())
    assert a.p_plus.shape == (5,)
    assert torch.equal(a.log_p_plus, b.log_p_plus) and torch.equal(a.log_p_minus, b.log_p_minus)

    image = Image.new("RGB", (90, 60), (30, 160, 40))
    cands = ["Step 1: it is green.\nStep 2: so green.\nAnswer: green", "Step 1: red.\nAnswer: red"]
    scores = [load_scorer(d, batch_size=2).score_candidates(image, "What colour?", cands) for d in (chat, native)]
    assert [len(s) for s in scores[0]] == [3, 2]
    assert scores[0] == scores[1]


def test_chat_layout_in_the_hub_cache_is_converted_too(chat_and_native, tmp_path, monkeypatch, capsys):
    """A hub id whose snapshot is a chat-layout checkpoint (the released DreamPRM-1.5 ones): the
    snapshot's files are symlinks into the cache's blobs/, as the hub cache lays them out."""
    import hashlib
    import os

    from huggingface_hub import constants

    from dreamprm.prm import ProcessRewardModel

    chat, native = chat_and_native
    repo = tmp_path / "models--someone--dreamprm-chat"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for f in chat.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    prm = ProcessRewardModel.from_pretrained("someone/dreamprm-chat").eval()
    assert "note: someone/dreamprm-chat is in InternVL's chat layout; converted in memory" in capsys.readouterr().err
    ref = ProcessRewardModel.from_pretrained(native).eval()
    batch = _batch(ref)
    with torch.no_grad():
        assert torch.equal(prm(**batch.model_inputs()).log_p_plus, ref(**batch.model_inputs()).log_p_plus)


def _load_error(name):
    from dreamprm.prm import ModelLoadError, ProcessRewardModel

    with pytest.raises(ModelLoadError) as info:
        ProcessRewardModel.from_pretrained(name)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_folder_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _load_error("./weights/run1").startswith("model folder not found: ./weights/run1 (train stage 1 first?")
    assert _load_error(str(tmp_path / "nope")).startswith(f"model folder not found: {tmp_path / 'nope'} (")
    # more than one '/', or not a valid hub id: a path, never sent to the hub
    assert _load_error("runs/stage1/weights").startswith("model folder not found: runs/stage1/weights (")
    assert _load_error("my model").startswith("model folder not found: my model (")


def test_folder_without_config_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _load_error(tmp_path / "empty") == (
        f"model folder has no config.json: {tmp_path / 'empty'} (it is not a model checkpoint)")
    run = tmp_path / "run"
    for it in (2, 10):
        (run / "checkpoints" / f"iter-{it}" / "prm").mkdir(parents=True)
        (run / "checkpoints" / f"iter-{it}" / "prm" / "config.json").write_text("{}")
    assert _load_error(run) == (f"model folder has no config.json: {run} (the run has not exported a model yet; "
                                f"its latest checkpoint's model is {run / 'checkpoints' / 'iter-10' / 'prm'})")
    (tmp_path / "file.bin").write_bytes(b"x")
    assert _load_error(tmp_path / "file.bin").startswith("not a model folder:")


def test_unreachable_hub_id_is_a_one_line_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    msg = _load_error("OpenGVLab/InternVL3-1B-hf")
    assert msg.startswith("cannot download OpenGVLab/InternVL3-1B-hf from the Hugging Face hub (offline?): ")
    assert "no local folder OpenGVLab/InternVL3-1B-hf exists either" in msg


def test_corrupt_weights_and_unknown_layouts_are_one_line_errors(tiny_dir, chat_and_native, tmp_path):
    import json

    native = tmp_path / "native"
    shutil.copytree(tiny_dir, native)
    data = (native / "model.safetensors").read_bytes()
    (native / "model.safetensors").write_bytes(data[: len(data) // 3])  # a copy cut short
    assert _load_error(native).startswith(f"cannot load the model in {native} (damaged or incomplete files?): ")

    chat = shutil.copytree(chat_and_native[0], tmp_path / "chat")
    (chat / "model.safetensors").write_bytes(b"\x00" * 64)
    msg = _load_error(chat)
    assert msg.startswith(f"cannot load the chat-layout checkpoint {chat}: {chat}: cannot read 'model.safetensors' (")

    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert _load_error(other).startswith(f"{other}: unknown checkpoint layout (config.json key 'model_type'='bert'")
