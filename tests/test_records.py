"""Record loading in the shapes upstream publishes: repeated meta/test ids, ``../`` image paths,
two consecutive user turns; and a training run on a meta file shaped like upstream's."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

import train
from dreamprm.prompt import SYSTEM_PROMPT
from dreamprm.records import DataError, load_records, resolve_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _upstream_meta_records() -> list[dict]:
    """Records shaped like upstream's data/meta_MMMU_Pro.json: 4 CoTs per question under one id,
    a ``response``, ``../data/meta_images/<id>.png``, the question turn followed directly by the
    first step's user turn, and ``+`` placeholders."""
    questions = {
        "test_Art_113": "Question: <image 1> of a man was painted by which artist?\n\nOptions: (A) M (B) G (C) J (D) A",
        "test_History_134": "Question: The conflict in <image 1> is best understood as?\n\nOptions: (A) x (B) y",
        "test_Energy_152": "Question: Compute the force on the gate. <image 1>\n\nOptions: (A) 1 N (B) 2 N (C) 3 N",
    }
    responses = [
        ("D", ["D"], False),
        ("[Reasoning]\n1. The sign excludes one group.\n\n2. That is immigration.\n\nAnswer: B",
         ["The sign excludes one group.", "That is immigration.", "Answer: B"], True),
        ("[Reasoning]\nOne paragraph of reasoning.\n\nAnswer: C", ["One paragraph of reasoning.", "Answer: C"], True),
        ("C", ["C"], False),
    ]
    records = []
    for qid, question in questions.items():
        for response, steps, correct in responses:
            conv = [{"from": "system", "value": SYSTEM_PROMPT}, {"from": "human", "value": "### Question:\n" + question}]
            for step in steps:
                conv += [{"from": "human", "value": step}, {"from": "gpt", "value": "+"}]
            records.append({"id": qid, "response": response, "true_false": correct,
                            "image": f"../data/meta_images/{qid}.png", "conversations": conv})
    return records


def _place_images(root: Path, records) -> None:
    folder = root / "data" / "meta_images"
    folder.mkdir(parents=True, exist_ok=True)
    samples = sorted((DATA / "images").glob("*.png"))
    for i, qid in enumerate(sorted({r["id"] for r in records})):
        shutil.copy(samples[i], folder / f"{qid}.png")


def test_meta_and_test_files_may_repeat_ids_training_files_may_not(tmp_path):
    records = _upstream_meta_records()
    _place_images(tmp_path, records)
    path = tmp_path / "upstream" / "meta_MMMU_Pro.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records))
    kept, report = load_records(path, "meta")
    assert len(kept) == 12 and report.repeated_ids == 9  # 3 questions x 4 CoTs
    assert "9 records repeat an earlier record's id" in report.summary()

    test_records = json.loads((DATA / "test.json").read_text())[:2]
    for r in test_records:
        r["image_path"] = str(DATA / r["image_path"])
        r["id"] = "same"
    (tmp_path / "test.json").write_text(json.dumps(test_records))
    assert len(load_records(tmp_path / "test.json", "test")[0]) == 2

    train_records = json.loads((DATA / "train.json").read_text())[:3]
    for r in train_records:
        r["image"] = str(DATA / r["image"])
    train_records[2]["id"] = train_records[0]["id"]
    (tmp_path / "train.json").write_text(json.dumps(train_records))
    with pytest.raises(DataError, match=r"record 2 .*field 'id': duplicate of record 0"):
        load_records(tmp_path / "train.json", "train")


def test_dotdot_image_paths_resolve_where_upstream_reads_them(tmp_path, monkeypatch):
    (tmp_path / "data" / "meta_images").mkdir(parents=True)
    image = tmp_path / "data" / "meta_images" / "q.png"
    shutil.copy(next((DATA / "images").glob("*.png")), image)
    # the JSON in data/ (upstream's layout): "../data/..." beside it is the same folder
    assert resolve_image("../data/meta_images/q.png", tmp_path / "data" / "meta.json").resolve() == image
    # the JSON anywhere else: upstream opens path[1:] from the working directory
    monkeypatch.chdir(tmp_path)
    assert resolve_image("../data/meta_images/q.png", tmp_path / "x" / "y" / "meta.json").resolve() == image
    # nothing there: the error names the path beside the JSON
    missing = resolve_image("../data/meta_images/none.png", tmp_path / "x" / "meta.json")
    assert missing == tmp_path / "x" / ".." / "data" / "meta_images" / "none.png"


def test_a_meta_file_shaped_like_upstreams_trains(tmp_path, tiny_dir, monkeypatch, capsys):
    records = _upstream_meta_records()
    _place_images(tmp_path, records)
    (tmp_path / "elsewhere").mkdir()
    meta = tmp_path / "elsewhere" / "meta_MMMU_Pro.json"
    meta.write_text(json.dumps(records))
    monkeypatch.chdir(tmp_path)  # the images are found as upstream finds them: ./data/meta_images
    code = train.main([
        "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--no_progress",
        "--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(meta),
        "--weights_path", str(tmp_path / "w"), "--figs_dir", str(tmp_path / "figs"),
        "--iteration_num", "3", "--save_every_iterations", "3", "--meta_batch_size", "2",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "12 meta records" in out and "9 records repeat" in out
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("meta_loss" in r for r in rows)


def test_more_than_one_image_placeholder_is_a_clear_record_error(tmp_path):
    """Upstream puts the image at a literal '<image>' and asserts there is at most one: a record
    with two is reported at load time, not deep inside a training run."""
    meta = json.loads((DATA / "meta.json").read_text())[:2]
    for r in meta:
        r["image"] = str(DATA / r["image"])
    meta[1]["conversations"][1]["value"] += " <image> and <image>"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"record 1 .*field 'conversations': 2 '<image>' placeholders"):
        load_records(tmp_path / "meta.json", "meta")
    test = json.loads((DATA / "test.json").read_text())[:1]
    test[0]["image_path"] = str(DATA / test[0]["image_path"])
    test[0]["question"] += " <image>"
    test[0]["candidates"][1] += " see <image>"
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"record 0 .*field 'candidates\[1\]'"):
        load_records(tmp_path / "test.json", "test")
    test[0]["candidates"][1] = "no placeholder"
    (tmp_path / "test.json").write_text(json.dumps(test))
    assert len(load_records(tmp_path / "test.json", "test")[0]) == 1  # one '<image>' is fine


# ----------------------------------------------------------------------------------------------
# Text fields, images, plurals
# ----------------------------------------------------------------------------------------------


def _sample(kind: str, n: int) -> list[dict]:
    """The first ``n`` sample records of ``kind`` with absolute image paths."""
    records = json.loads((DATA / f"{kind}.json").read_text())[:n]
    field = "image_path" if kind == "test" else "image"
    for r in records:
        r[field] = str(DATA / r[field])
    return records


def _load_error(path: Path, kind: str) -> list[str]:
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    return str(err.value).splitlines()


@pytest.mark.parametrize("token", ["<IMG_CONTEXT>", "<img>", "</img>"])
def test_image_tokens_in_any_text_field_are_record_problems(tmp_path, token):
    """Upstream reads them as image slots: a training step would fail on an image-token count
    and test.py would score a different prompt. Each is one line naming file, record, field."""
    train = _sample("train", 3)
    step = next(t for t, turn in enumerate(train[1]["conversations"]) if turn["from"] == "human" and t > 1)
    train[1]["conversations"][step]["value"] += f" see {token} here"
    (tmp_path / "train.json").write_text(json.dumps(train))
    lines = _load_error(tmp_path / "train.json", "train")
    path = tmp_path / "train.json"
    assert lines[0] == f"{path}: 1 bad record (use --skip_bad_records to drop them):"
    assert lines[1].startswith(f"{path}: record 1 (id 'train_001'): field 'conversations[{step}]'.value: holds {token!r}")
    assert len(lines) == 2
    kept, report = load_records(path, "train", skip_bad=True)
    assert [r["id"] for r in kept] == ["train_000", "train_002"] and report.indices == [0, 2]

    meta = _sample("meta", 2)  # a record's own system turn
    assert meta[0]["conversations"][0]["from"] == "system"
    meta[0]["conversations"][0]["value"] = f"{token} system"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    lines = _load_error(tmp_path / "meta.json", "meta")
    assert lines[1].startswith(f"{tmp_path / 'meta.json'}: record 0 (id 'meta_000'): field 'conversations[0]'.value: holds")

    test = _sample("test", 2)
    test[0]["question"] += token
    test[1]["candidates"][2] = token + test[1]["candidates"][2]
    (tmp_path / "test.json").write_text(json.dumps(test))
    lines = _load_error(tmp_path / "test.json", "test")
    assert lines[0].startswith(f"{tmp_path / 'test.json'}: 2 bad records")
    assert lines[1].startswith(f"{tmp_path / 'test.json'}: record 0 (id 'test_000'): field 'question': holds {token!r}")
    assert lines[2].startswith(f"{tmp_path / 'test.json'}: record 1 (id 'test_001'): field 'candidates[2]': holds {token!r}")

    # the '<image>' placeholder and chat markup stay allowed (the prompt builder makes markup plain text)
    train[1]["conversations"][step]["value"] = "as <image> shows, <|im_start|>assistant\n+<|im_end|>\n <image 2>"
    (tmp_path / "train.json").write_text(json.dumps(train))
    assert len(load_records(tmp_path / "train.json", "train")[0]) == 3


def test_a_lone_surrogate_in_a_step_is_a_record_problem(tmp_path):
    train = _sample("train", 2)
    text = json.dumps(train).replace("Answer: ", "Answer: \\ud800", 1)
    (tmp_path / "train.json").write_text(text)
    lines = _load_error(tmp_path / "train.json", "train")
    assert "record 0 (id 'train_000'): field 'conversations[" in lines[1] and "lone surrogate '\\ud800'" in lines[1]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_broken_pixels(path: Path, width: int, height: int) -> Path:
    """A PNG whose every chunk checksum is right but whose IDAT is no zlib stream a decoder
    accepts (a deflate block of the reserved type 3): ``verify()`` passes, decoding fails."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"\x78\x9c" + b"\x07" + bytes(range(256)) * 4
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def test_an_image_that_verifies_but_does_not_decode_is_a_record_problem(tmp_path):
    from PIL import Image

    broken = _png_with_broken_pixels(tmp_path / "broken.png", 40, 30)
    with Image.open(broken) as im:
        im.verify()  # the checksums are right: what validation checked until now
    with pytest.raises(OSError), Image.open(broken) as im:
        im.load()  # what training does first
    meta = _sample("meta", 3)
    meta[2]["image"] = str(broken)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    lines = _load_error(tmp_path / "meta.json", "meta")
    assert lines[1].startswith(f"{tmp_path / 'meta.json'}: record 2 (id 'meta_002'): field 'image': "
                               f"image unreadable: {broken} (")
    kept, report = load_records(tmp_path / "meta.json", "meta", skip_bad=True)
    assert report.indices == [0, 1] and report.skipped == 1


def test_an_absurd_pixel_count_is_refused_before_decoding(tmp_path):
    huge = _png_with_broken_pixels(tmp_path / "huge.png", 10_000, 10_000)  # 100 M pixels, undecodable
    train = _sample("train", 2)
    train[1]["image"] = str(huge)
    (tmp_path / "train.json").write_text(json.dumps(train))
    with pytest.warns(Warning):  # Pillow's own decompression-bomb warning, from opening the header
        lines = _load_error(tmp_path / "train.json", "train")
    assert lines[1] == (f"{tmp_path / 'train.json'}: record 1 (id 'train_001'): field 'image': image too large: "
                        f"{huge} is 10000x10000 = 100,000,000 pixels (at most 89,478,485)")


@pytest.mark.parametrize("kind, field", [("train", "image"), ("meta", "image"), ("test", "image_path")])
def test_an_empty_image_path_names_the_record_and_field(tmp_path, kind, field):
    records = _sample(kind, 2)
    records[1][field] = ""
    (tmp_path / "f.json").write_text(json.dumps(records))
    lines = _load_error(tmp_path / "f.json", kind)
    rid = records[1]["id"]
    assert lines[1] == f"{tmp_path / 'f.json'}: record 1 (id {rid!r}): field '{field}': is empty (it must name an image file)"
    records[1][field] = str(tmp_path)  # a folder is no image either
    (tmp_path / "f.json").write_text(json.dumps(records))
    lines = _load_error(tmp_path / "f.json", kind)
    assert lines[1] == f"{tmp_path / 'f.json'}: record 1 (id {rid!r}): field '{field}': {tmp_path} is a folder, not an image file"


def test_counts_in_messages_and_summaries_agree_in_number(tmp_path):
    train = _sample("train", 2)
    train[1]["conversations"] = [t for t in train[1]["conversations"] if t["from"] != "gpt"]
    (tmp_path / "train.json").write_text(json.dumps(train))
    assert _load_error(tmp_path / "train.json", "train")[0].endswith(": 1 bad record (use --skip_bad_records to drop them):")
    kept, report = load_records(tmp_path / "train.json", "train", skip_bad=True)
    summary = report.summary()
    assert summary.startswith(f"{tmp_path / 'train.json'}: 1 train record, ")
    assert summary.endswith(", 1 domain; skipped 1 bad record")
    one_step = _sample("meta", 1)
    one_step[0]["conversations"] = one_step[0]["conversations"][:4]
    one_step[0]["true_false"] = False
    (tmp_path / "meta.json").write_text(json.dumps(one_step + one_step))
    summary = load_records(tmp_path / "meta.json", "meta")[1].summary()
    assert "2 meta records, 2 steps (2 +, 0 -), 0 correct / 2 wrong CoTs, 1 domain; 1 record repeats" in summary
    (tmp_path / "meta.json").write_text(json.dumps(one_step))
    assert ": 1 meta record, 1 step (1 +, 0 -), 0 correct / 1 wrong CoT, 1 domain" in \
        load_records(tmp_path / "meta.json", "meta")[1].summary()
    test = _sample("test", 1)
    test[0]["candidates"], test[0]["true_false"] = test[0]["candidates"][:1], test[0]["true_false"][:1]
    (tmp_path / "test.json").write_text(json.dumps(test))
    assert ": 1 test record, 1 candidate (" in load_records(tmp_path / "test.json", "test")[1].summary()
    test = _sample("test", 1)
    test[0]["true_false"] = test[0]["true_false"][:1]
    (tmp_path / "test.json").write_text(json.dumps(test))
    n = len(test[0]["candidates"])
    assert _load_error(tmp_path / "test.json", "test")[1].endswith(f"field 'true_false': 1 value for {n} candidates")
