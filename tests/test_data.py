"""Record loading in the shapes upstream publishes: repeated meta/test ids, ``../`` image paths,
two consecutive user turns; and a training run on a meta file shaped like upstream's."""

import json
import shutil
from pathlib import Path

import pytest

import train
from dreamprm.data import DataError, load_records, resolve_image
from dreamprm.prompt import SYSTEM_PROMPT

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
