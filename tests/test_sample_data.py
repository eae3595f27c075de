"""The committed sample data is exactly what data/make_sample_data.py generates, and is valid.

PNG bytes depend on Pillow's zlib build; requirements.txt pins Pillow, so they are stable.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dreamprm.answers import is_correct
from dreamprm.steps import extract_answer, split_steps

DATA = Path(__file__).resolve().parents[1] / "data"
SCRIPT = DATA / "make_sample_data.py"
JSONS = ["train.json", "coldstart.json", "meta.json", "test.json", "questions.json"]
COLOURS = {"red", "green", "blue", "yellow"}


def load(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True)
    return out


def test_regeneration_is_byte_identical(regenerated):
    made = sorted(p.relative_to(regenerated).as_posix() for p in regenerated.rglob("*") if p.is_file())
    committed = sorted(f"images/{p.name}" for p in (DATA / "images").glob("*.png")) + sorted(JSONS)
    assert sorted(made) == sorted(committed)
    for rel in made:
        assert (regenerated / rel).read_bytes() == (DATA / rel).read_bytes(), rel


def test_json_style_is_indent1_utf8_trailing_newline():
    for name in JSONS:
        text = (DATA / name).read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=1, ensure_ascii=False) + "\n"


def check_training_record(rec, meta=False):
    assert set(rec) == {"id", "image", "conversations", "dataset"} | ({"true_false"} if meta else set())
    assert isinstance(rec["id"], (str, int))
    conv = rec["conversations"]
    if conv[0]["from"] == "system":
        conv = conv[1:]
    assert conv[0]["from"] == "human" and conv[0]["value"].startswith("### Question:\n")
    turns = conv[1:]
    assert len(turns) >= 4 and len(turns) % 2 == 0
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    labels = [t["value"] for t in turns[1::2]]
    assert set(labels) <= ({"+"} if meta else {"+", "-"})
    steps = [t["value"] for t in turns[0::2]]
    assert steps[-1].startswith("Answer: ") and steps[-1][len("Answer: "):] in COLOURS
    if not meta:
        # Once a step is wrong, every later step is wrong too ("correct up to this step").
        assert "".join(labels) == "".join(sorted(labels))  # all "+" before all "-"
    return steps


@pytest.mark.parametrize("name,size", [("train.json", 48), ("coldstart.json", 32), ("meta.json", 16)])
def test_training_like_files(name, size):
    recs = load(name)
    assert len(recs) == size
    assert len({r["id"] for r in recs}) == size
    assert len({r["dataset"] for r in recs}) >= 3
    has_system = [r["conversations"][0]["from"] == "system" for r in recs]
    assert any(has_system) and not all(has_system)
    for rec in recs:
        check_training_record(rec, meta=name == "meta.json")
        assert (DATA / rec["image"]).is_file()


def test_training_labels_follow_the_image_colour():
    for rec in load("train.json") + load("coldstart.json"):
        turns = [t for t in rec["conversations"] if t["from"] != "system"][1:]
        for step, label in zip(turns[0::2], turns[1::2]):
            said = [c for c in COLOURS if c in step["value"].split()[-1]]
            if said:  # a colour claim is right iff it names a colour present in the image
                img = Image.open(DATA / rec["image"]).convert("RGB")
                assert (label["value"] == "+") == image_has_colour(img, said[0]), (rec["id"], step)
            else:
                assert label["value"] == "+"


REFERENCE = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215), "yellow": (235, 205, 35)}


def image_has_colour(img, colour):
    counts = {rgb: n for n, rgb in img.getcolors(maxcolors=1 << 16)}
    return counts.get(REFERENCE[colour], 0) > 20


def test_meta_is_balanced():
    flags = [r["true_false"] for r in load("meta.json")]
    assert flags.count(True) == flags.count(False) == 8


def test_test_file():
    recs = load("test.json")
    assert len(recs) == 8
    assert any(all(r["true_false"]) for r in recs)
    assert any(not any(r["true_false"]) for r in recs)
    for rec in recs:
        assert set(rec) == {"id", "question", "image_path", "candidates", "true_false"}
        assert 4 <= len(rec["candidates"]) <= 8
        assert len(rec["true_false"]) == len(rec["candidates"])
        assert (DATA / rec["image_path"]).is_file()
        img = Image.open(DATA / rec["image_path"]).convert("RGB")
        for cand, ok in zip(rec["candidates"], rec["true_false"]):
            assert cand.startswith("[Reasoning]\nStep 1: ")
            answer = extract_answer(cand)
            assert ok == image_has_colour(img, answer)
            steps = split_steps(cand)
            assert steps[-1] == f"Answer: {answer}" and len(steps) >= 3


def test_images_are_small_rgb_pngs():
    for path in (DATA / "images").glob("*.png"):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            assert 40 <= min(img.size) and max(img.size) <= 120
            assert img.info == {}  # no text chunks, timestamps or other metadata


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_output_that_cannot_be_a_folder_is_one_line(tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "sub"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(out) in proc.stderr and blocker.read_text() == "x"


def test_questions_file_is_the_test_questions_with_their_answers():
    questions, tests = load("questions.json"), load("test.json")
    assert [q["id"] for q in questions] == [t["id"] for t in tests]
    assert any("options" in q for q in questions) and not all("options" in q for q in questions)
    for q, t in zip(questions, tests):
        assert set(q) <= {"id", "question", "image", "options", "answer"}
        assert (q["question"], q["image"]) == (t["question"], t["image_path"])
        # the answer checker agrees with the sample's own labels, multiple choice or free text
        assert [is_correct(c, q) for c in t["candidates"]] == t["true_false"]
