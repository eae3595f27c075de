"""dreamprm.convert: native -> chat -> native round trip on the tiny InternVL, and chat-layout errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, InternVLConfig, InternVLForConditionalGeneration

from dreamprm.convert import (
    KEY_RULES,
    ConversionError,
    chat_key_to_native,
    convert,
    detect_layout,
    load_chat_state_dict,
    main,
    native_key_to_chat,
)
from dreamprm.tiny import build_tiny


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    """A fresh copy of the bundled tiny native model."""
    path = tmp_path_factory.mktemp("native") / "tiny"
    build_tiny(path)
    return path


@pytest.fixture(scope="module")
def chat_dir(native_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("chat") / "ckpt"
    convert(native_dir, dst)  # direction auto-detected: to_chat
    return dst


@pytest.fixture(scope="module")
def back_dir(chat_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("back") / "ckpt"
    convert(chat_dir, dst)  # auto: to_hf
    return dst


def _config_dict(cfg):
    d = cfg.to_dict()
    for k in ("transformers_version", "_name_or_path", "internvl_chat", "dtype"):
        d.pop(k, None)
    return d


def test_layout_detection(native_dir, chat_dir, back_dir):
    assert detect_layout(native_dir) == "native"
    assert detect_layout(chat_dir) == "chat"
    assert detect_layout(back_dir) == "native"


def test_chat_layout_files(chat_dir):
    cfg = json.loads((chat_dir / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"]
    assert cfg["model_type"] == "internvl_chat"
    assert cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["vision_config"]["qkv_bias"] is True
    assert cfg["template"] == "internvl2_5" and cfg["ps_version"] == "v2"
    assert cfg["downsample_ratio"] == 0.5 and cfg["force_image_size"] == 56
    sd = load_chat_state_dict(chat_dir)
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in sd
    assert sd["vision_model.encoder.layers.0.attn.qkv.weight"].shape == (96, 32)
    assert "mlp1.1.weight" in sd and "language_model.lm_head.weight" in sd
    assert not any(k.startswith(("model.", "vision_tower", "multi_modal_projector")) for k in sd)
    tok_cfg = json.loads((chat_dir / "tokenizer_config.json").read_text())
    vocab = (chat_dir / "tokenizer.json").read_text()
    assert tok_cfg and all(t in vocab for t in ("<img>", "</img>", "<IMG_CONTEXT>"))
    assert (chat_dir / "vocab.json").exists() and (chat_dir / "merges.txt").exists()


def test_qkv_split_order(native_dir, chat_dir):
    native = InternVLForConditionalGeneration.from_pretrained(native_dir).state_dict()
    qkv = load_chat_state_dict(chat_dir)["vision_model.encoder.layers.1.attn.qkv.weight"]
    q, k, v = qkv.chunk(3)
    pre = "model.vision_tower.encoder.layer.1.attention."
    assert torch.equal(q, native[pre + "q_proj.weight"])
    assert torch.equal(k, native[pre + "k_proj.weight"])
    assert torch.equal(v, native[pre + "v_proj.weight"])


def test_round_trip_tensors_and_config(native_dir, back_dir):
    a = InternVLForConditionalGeneration.from_pretrained(native_dir)
    b = InternVLForConditionalGeneration.from_pretrained(back_dir)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k
    assert _config_dict(InternVLConfig.from_pretrained(native_dir)) == _config_dict(InternVLConfig.from_pretrained(back_dir))


def test_round_trip_logits_and_processor(native_dir, back_dir):
    from PIL import Image

    procs = [AutoProcessor.from_pretrained(d) for d in (native_dir, back_dir)]
    models = [InternVLForConditionalGeneration.from_pretrained(d).eval() for d in (native_dir, back_dir)]
    img = Image.new("RGB", (120, 60), (200, 30, 90))
    text = "<|im_start|>user\n<IMG_CONTEXT>\nIs this red?<|im_end|>\n<|im_start|>assistant\n"
    logits = []
    for proc, model in zip(procs, models):
        assert type(proc).__name__ == "InternVLProcessor"
        assert proc.image_processor.crop_to_patches and proc.image_processor.size["height"] == 56
        inputs = proc(images=[img], text=[text], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits)
    assert torch.equal(logits[0], logits[1])


def test_chat_round_trip_is_stable(chat_dir, back_dir, tmp_path):
    again = convert(back_dir, tmp_path / "chat2")
    assert json.loads((again / "config.json").read_text()) == json.loads((chat_dir / "config.json").read_text())
    a, b = load_chat_state_dict(chat_dir), load_chat_state_dict(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dtype_option(chat_dir, tmp_path):
    out = convert(chat_dir, tmp_path / "bf16", direction="to_hf", dtype="bfloat16")
    model = InternVLForConditionalGeneration.from_pretrained(out, dtype="auto")
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_key_table_is_bijective():
    samples = [c.replace("{L}", "3").replace("{P}", "bias").replace("{REST}", "layers.0.mlp.up_proj.weight") for c, _ in KEY_RULES]
    for key in samples:
        (native,) = chat_key_to_native(key)
        assert native_key_to_chat(native) == (key, -1)
    fused = chat_key_to_native("vision_model.encoder.layers.7.attn.qkv.weight")
    assert [n.rsplit(".", 2)[-2] for n in fused] == ["q_proj", "k_proj", "v_proj"]
    assert chat_key_to_native("vision_model.something_else") is None


# ---------------------------------------------------------------------------------- errors
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_error_missing_key(chat_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(chat_dir, tmp_path / "bad")
    sd = load_file(str(bad / "model.safetensors"))
    del sd["vision_model.encoder.layers.1.attn.qkv.weight"]
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"missing key 'vision_model.encoder.layers.1.attn.qkv.weight'") as e:
        convert(bad, tmp_path / "out")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_error_unknown_key(chat_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(chat_dir, tmp_path / "bad")
    sd = load_file(str(bad / "model.safetensors"))
    sd["vision_model.mystery.weight"] = torch.zeros(2)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"unrecognised chat-layout weight key 'vision_model.mystery.weight'"):
        convert(bad, tmp_path / "out")


def test_error_shape_mismatch(chat_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(chat_dir, tmp_path / "bad")
    sd = load_file(str(bad / "model.safetensors"))
    sd["mlp1.1.weight"] = torch.zeros(3, 3)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"key 'mlp1.1.weight' has shape"):
        convert(bad, tmp_path / "out")


def test_error_unknown_layout_and_config_keys(chat_dir, tmp_path):
    bad = _copy(chat_dir, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["Foo"], "model_type": "foo"}))
    with pytest.raises(ConversionError, match=r"unknown checkpoint layout"):
        convert(bad, tmp_path / "out")
    cfg2 = dict(cfg)
    del cfg2["llm_config"]
    (bad / "config.json").write_text(json.dumps(cfg2))
    with pytest.raises(ConversionError, match=r"config.json has no key 'llm_config'"):
        convert(bad, tmp_path / "out")
    (bad / "config.json").write_text(json.dumps({**cfg, "ps_version": "v1"}))
    with pytest.raises(ConversionError, match=r"'ps_version'"):
        convert(bad, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"no config.json"):
        convert(tmp_path, tmp_path / "out2")


def test_error_no_weights_and_nonempty_dst(chat_dir, tmp_path):
    bad = _copy(chat_dir, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"no weights"):
        convert(bad, tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(ConversionError, match=r"not empty"):
        convert(chat_dir, busy)


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(tmp_path) in err and "model_type" in err


# ------------------------------------------------------------------ destination checked first
def test_busy_destination_is_refused_before_any_weight_is_read(native_dir, chat_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    for src in (native_dir, chat_dir):  # both directions, with weights that cannot be read
        bad = _copy(src, tmp_path / f"bad-{src.parent.name}")
        (bad / "model.safetensors").write_bytes(b"\x00" * 64)
        with pytest.raises(ConversionError, match=r"destination exists and is not empty") as e:
            convert(bad, busy)
        assert str(e.value) == f"{busy}: destination exists and is not empty (pass --overwrite)"
        with pytest.raises(ConversionError, match=r"cannot (read|load)"):
            convert(bad, tmp_path / "fresh")
        assert not (tmp_path / "fresh").exists()  # a failed conversion leaves no empty destination behind


# ------------------------------------------------------------------ rope scaling for transformers 4.49
def test_scaled_rope_is_written_as_rope_scaling(native_dir, tmp_path):
    src = _copy(native_dir, tmp_path / "linear")
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    (src / "config.json").write_text(json.dumps(cfg))
    chat = convert(src, tmp_path / "chat")
    llm = json.loads((chat / "config.json").read_text())["llm_config"]
    # what Qwen2Config/LlamaConfig of transformers 4.49 read: a top-level rope_theta and a
    # rope_scaling dict with the type (both names) and the factor
    assert "rope_parameters" not in llm
    assert llm["rope_theta"] == 500000.0
    assert llm["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 2.0}
    back = convert(chat, tmp_path / "back")
    assert InternVLConfig.from_pretrained(back).text_config.rope_parameters == {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
    # plain RoPE: rope_scaling null, as 4.49 writes it
    plain = json.loads((convert(native_dir, tmp_path / "plain") / "config.json").read_text())["llm_config"]
    assert plain["rope_scaling"] is None and plain["rope_theta"] == 1_000_000.0 and "rope_parameters" not in plain


# ------------------------------------------------------------------ shard names from the index
def _shard(chat_dir, folder):
    """``folder``: the chat checkpoint with its weights in two shards and an index."""
    from safetensors.torch import save_file

    folder = _copy(chat_dir, folder)
    sd = load_chat_state_dict(folder)
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for name, part in zip(names, halves):
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder, weight_map


def _set_shard(folder, weight_map, old, new):
    wm = {k: (new if v == old else v) for k, v in weight_map.items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))


def test_index_shards_outside_the_folder_are_refused(chat_dir, tmp_path):
    import os

    folder, weight_map = _shard(chat_dir, tmp_path / "sharded")
    whole = load_chat_state_dict(chat_dir)
    got = load_chat_state_dict(folder)
    assert got.keys() == whole.keys() and all(torch.equal(got[k], whole[k]) for k in got)

    second = "model-00002-of-00002.safetensors"
    outside = tmp_path / second  # a readable weight file beside the checkpoint
    shutil.copy(folder / second, outside)
    for name in ("../" + second, str(outside)):
        _set_shard(folder, weight_map, second, name)
        with pytest.raises(ConversionError) as e:
            load_chat_state_dict(folder)
        assert str(e.value) == (f"{folder}: model.safetensors.index.json names weight file '{name}' outside the folder; "
                                "refusing to read it")
    _set_shard(folder, weight_map, second, "link.safetensors")
    os.symlink(outside, folder / "link.safetensors")
    with pytest.raises(ConversionError, match=r"weight file 'link.safetensors' \(listed in model.safetensors.index.json\) "
                                              r"is a link to .*, outside the folder; refusing to read it"):
        convert(folder, tmp_path / "out")
    # the hub cache's own layout (snapshot files linking into the repository's blobs/) is accepted
    snap = tmp_path / "models--a--b" / "snapshots" / ("c" * 40)
    (tmp_path / "models--a--b" / "blobs").mkdir(parents=True)
    shutil.copytree(folder, snap, symlinks=False)
    (snap / "link.safetensors").unlink()
    blob = tmp_path / "models--a--b" / "blobs" / "0123abcd"
    shutil.copy(outside, blob)
    os.symlink(os.path.relpath(blob, snap), snap / "link.safetensors")
    got = load_chat_state_dict(snap)
    assert all(torch.equal(got[k], whole[k]) for k in whole)


# ------------------------------------------------------------------ every CLI error on one line
def _one_error_line(capfd):
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_errors_are_one_line(chat_dir, tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        main([str(chat_dir), str(tmp_path / "o"), "--dtype", "float8"])
    assert e.value.code == 2
    assert _one_error_line(capfd).startswith("error: argument --dtype: invalid choice: 'float8'")

    (tmp_path / "a_file").write_text("x")
    assert main([str(chat_dir), str(tmp_path / "a_file")]) == 2
    assert _one_error_line(capfd) == f"error: {tmp_path / 'a_file'}: destination exists and is not a folder"

    bad = _copy(chat_dir, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "downsample_ratio": "half"}))
    assert main([str(bad), str(tmp_path / "o2")]) == 2
    assert _one_error_line(capfd).startswith(f"error: {bad}: config.json has a malformed 'force_image_size', ")

    (bad / "config.json").write_text(json.dumps({**cfg, "vision_config": [1, 2]}))
    assert main([str(bad), str(tmp_path / "o3")]) == 2
    assert _one_error_line(capfd) == f"error: {bad}: config.json keys 'vision_config' and 'llm_config' must be objects"

    (bad / "config.json").write_text("[1, 2]")
    assert main([str(bad), str(tmp_path / "o4")]) == 2
    assert _one_error_line(capfd) == f"error: {bad}: config.json is not a JSON object"
