"""BatchStream: DataLoader workers change where items are built, never which batches come out;
sequence lengths known before the model loads, and records over --max_length refused or dropped."""

import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from dreamprm.batching import BatchStream, ConversationDataset, ExampleBuilder, drop_overlong
from dreamprm.prompt import candidate_conversation
from dreamprm.records import DataError, load_records
from dreamprm.steps import split_steps

DATA = Path(__file__).resolve().parents[1] / "data"


def test_workers_yield_the_same_batches_across_an_epoch_boundary_and_a_resume(tiny_prm):
    records, _ = load_records(DATA / "train.json", "train")
    dataset = ConversationDataset(records[:7], DATA / "train.json", ExampleBuilder(tiny_prm.processor, 2))
    serial, parallel = BatchStream(dataset, 3, 5, 0), BatchStream(dataset, 3, 5, 0, num_workers=2)
    for n in range(5):  # 3 batches per epoch: crosses into the second epoch
        if n == 3:  # and the parallel one is resumed from a state mid-stream
            resumed = BatchStream(dataset, 3, 5, 0, num_workers=2)
            resumed.load_state_dict(parallel.state_dict())
            parallel = resumed
        a, b = serial.next(), parallel.next()
        for field in ("input_ids", "attention_mask", "label_pos", "labels", "index", "pixel_values"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (n, field)
    assert serial.state_dict() == parallel.state_dict() == {"epoch": 1, "taken": 2, "seed": 5, "batch_size": 3}


def test_length_buckets_pad_to_a_multiple_and_leave_the_step_outputs_alone(tiny_prm):
    """--length_bucket: every batch's length is a multiple of the bucket, padded on the right and
    masked; the step probabilities and the PRM's gradients are those of the unpadded batch."""
    records, _ = load_records(DATA / "train.json", "train")
    dataset = ConversationDataset(records[:5], DATA / "train.json", ExampleBuilder(tiny_prm.processor, 2))
    plain, bucketed = BatchStream(dataset, 2, 5, 0), BatchStream(dataset, 2, 5, 0, pad_to_multiple_of=96)
    for _ in range(3):  # the last batch of the epoch holds one record
        a, b = plain.next(), bucketed.next()
        n = a.input_ids.shape[1]
        assert b.input_ids.shape[1] % 96 == 0 and n <= b.input_ids.shape[1] < n + 96
        assert torch.equal(b.input_ids[:, :n], a.input_ids) and torch.equal(b.attention_mask[:, :n], a.attention_mask)
        assert not b.attention_mask[:, n:].any() and (b.input_ids[:, n:] == 0).all()
        for field in ("label_batch", "label_pos", "labels", "index", "pixel_values"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        outs = []
        for batch in (a, b):
            tiny_prm.zero_grad()
            out = tiny_prm(**batch.model_inputs())
            out.log_p_plus.sum().backward()
            outs.append((out.log_p_plus.detach(), [p.grad.clone() for p in tiny_prm.parameters() if p.grad is not None]))
        tiny_prm.zero_grad()  # the model is shared by the session's tests
        (ref, ref_grads), (got, got_grads) = outs
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        assert len(got_grads) == len(ref_grads) > 10
        for g, r in zip(got_grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Sequence lengths before the model loads, and --max_length
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


def _rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.mark.parametrize("max_patch_num", [1, 2, 6, 12])
def test_sequence_length_is_the_built_length_without_decoding_pixels(processor, max_patch_num):
    builder = ExampleBuilder(processor, max_patch_num)
    for kind in ("train", "meta"):
        records, _ = load_records(DATA / f"{kind}.json", kind)
        want = [len(builder.build(r["conversations"], _rgb(DATA / r["image"]))["input_ids"]) for r in records]
        assert builder.sequence_lengths(records, DATA / f"{kind}.json", kind) == want
        assert builder.sequence_length(records[0], DATA / f"{kind}.json", kind) == want[0]
    tests, _ = load_records(DATA / "test.json", "test")
    for rec in tests[:3]:  # test records: the longest candidate, split as test.py splits it
        image = _rgb(DATA / rec["image_path"])
        want = max(len(builder.build(candidate_conversation(rec["question"], split_steps(c)), image)["input_ids"])
                   for c in rec["candidates"])
        assert builder.sequence_length(rec, DATA / "test.json", "test") == want


def _undecodable_png(path, width, height):
    """Right header and checksums, pixel data no decoder accepts: only the size can be read."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x78\x9c\x07" + bytes(64))
                     + chunk(b"IEND", b""))
    return path


def test_image_tokens_come_from_the_size_and_the_tiling_rule(processor, tmp_path):
    builder = ExampleBuilder(processor, 6)
    per_tile = int(processor.image_seq_length)
    rec = json.loads((DATA / "train.json").read_text())[0]
    real = DATA / rec["image"]
    w, h = Image.open(real).size
    rec["image"] = str(_undecodable_png(tmp_path / "fake.png", w, h))
    assert builder.sequence_length(rec, tmp_path / "x.json") == \
        len(builder.build(rec["conversations"], _rgb(real))["input_ids"])
    wide = dict(rec, image=str(_undecodable_png(tmp_path / "wide.png", 3 * 56, 56)))  # 3x1 tiles + thumbnail
    assert builder.sequence_length(wide, tmp_path / "x.json") - builder.sequence_length(rec, tmp_path / "x.json") \
        == (4 - builder.image_tokens(w, h) // per_tile) * per_tile
    assert builder.image_tokens(3 * 56, 56) == 4 * per_tile


def _file_with_a_skipped_record(tmp_path, n=6):
    """n sample training records (images copied beside the file) after a bad record 0."""
    records = json.loads((DATA / "train.json").read_text())[:n]
    (tmp_path / "images").mkdir(exist_ok=True)
    for r in records:
        shutil.copy(DATA / r["image"], tmp_path / r["image"])
    bad = dict(records[0], id="bad", conversations=[])
    path = tmp_path / "train.json"
    path.write_text(json.dumps([bad] + records))
    return path


def test_drop_overlong_names_file_record_and_lengths(processor, tmp_path):
    path = _file_with_a_skipped_record(tmp_path)
    records, report = load_records(path, "train", skip_bad=True)
    assert report.indices == [1, 2, 3, 4, 5, 6]
    builder = ExampleBuilder(processor, 6)
    lengths = builder.sequence_lengths(records, path)
    limit = sorted(lengths)[2]
    over = [i for i, n in enumerate(lengths) if n > limit]
    assert 0 < len(over) < len(records)
    with pytest.raises(DataError) as err:
        drop_overlong(records, path, builder, limit, "train", skip_bad=False, indices=report.indices)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: {len(over)} bad records (use --skip_bad_records to drop them):"
    for line, i in zip(lines[1:], over):
        rec, n = records[i], lengths[i]
        image = builder.image_tokens(*Image.open(tmp_path / rec["image"]).size) + 2
        assert line == (f"{path}: record {i + 1} (id {rec['id']!r}): {n:,} tokens ({n - image:,} text + "
                        f"{image:,} image), longer than --max_length {limit:,}")
    kept, problems = drop_overlong(records, path, builder, limit, "train", skip_bad=True, indices=report.indices)
    assert kept == [r for r, n in zip(records, lengths) if n <= limit]
    assert problems == lines[1:]
    assert drop_overlong(records, path, builder, max(lengths), "train", skip_bad=False) == (records, [])
    with pytest.raises(DataError, match="no usable records"):
        drop_overlong(records, path, builder, 10, "train", skip_bad=True)


def test_drop_overlong_on_test_records_names_the_longest_candidate(processor):
    builder = ExampleBuilder(processor, 12)
    records, _ = load_records(DATA / "test.json", "test")
    rec = records[0]
    image = _rgb(DATA / rec["image_path"])
    lengths = [len(builder.build(candidate_conversation(rec["question"], split_steps(c)), image)["input_ids"])
               for c in rec["candidates"]]
    longest = max(range(len(lengths)), key=lambda j: (lengths[j], -j))
    short = dict(rec, id="short", candidates=["Answer: red"], true_false=[True])
    kept, problems = drop_overlong([rec, short], DATA / "test.json", builder, max(lengths) - 1, "test", skip_bad=True)
    assert kept == [short]
    assert len(problems) == 1 and problems[0].startswith(
        f"{DATA / 'test.json'}: record 0 (id 'test_000'): field 'candidates[{longest}]' (the longest): "
        f"{max(lengths):,} tokens")


def test_a_one_megabyte_step_is_measured_and_dropped_in_seconds(processor, tmp_path):
    path = _file_with_a_skipped_record(tmp_path, n=3)
    records, report = load_records(path, "train", skip_bad=True)
    records[1]["conversations"][-2]["value"] = ("The bar is red, so 2 + 2 = 4. " * 40_000)[:1_000_000]
    builder = ExampleBuilder(processor, 6)
    start = time.perf_counter()
    kept, problems = drop_overlong(records, path, builder, 4096, "train", skip_bad=True, indices=report.indices)
    assert time.perf_counter() - start < 30  # about 2 s on one loaded core
    assert kept == [records[0], records[2]]
    assert len(problems) == 1 and problems[0].startswith(f"{path}: record 2 (id 'train_001'): ")
    assert problems[0].endswith("longer than --max_length 4,096")
