"""python -m dreamprm.generate: against the chat-completions test server, and with the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chat_server import CANNED, ChatServer, closed_port_url

from dreamprm.generate import FIVE_STAGE, PLAIN, check_template, main, render_prompt
from dreamprm.policy import HttpPolicy
from dreamprm.records import load_records
from dreamprm.steps import extract_answer, split_steps

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def write_questions(folder: Path, records: list[dict], name: str = "questions.json") -> Path:
    """The records to ``folder/name`` (.json list or .jsonl), their images copied into ``folder/imgs``."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for rec in records:
        if rec.get("image", "").startswith("imgs/"):
            src = DATA / "images" / Path(rec["image"]).name
            if src.exists():
                shutil.copy(src, folder / rec["image"])
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


QUESTIONS = [
    {"id": "mc_right", "question": "Which colour is the bar?", "image": "imgs/chart_096.png",
     "options": ["red", "green"], "answer": "B"},
    {"id": "mc_wrong", "question": "Which colour is the ball?", "image": "imgs/scene_097.png",
     "options": {"A": "red", "B": "blue"}, "answer": "red"},
    {"id": "free", "question": "Name the letter.", "image": "imgs/shape_098.png", "answer": "b"},
    {"id": "unknown", "question": "No key for this one.", "image": "imgs/chart_099.png"},
]


def prompts_of(server) -> list[str]:
    return [r["body"]["messages"][0]["content"][-1]["text"] for r in server.requests]


def args(q, out, server, *extra):
    return ["--questions", str(q), "--output", str(out), "--base_url", server.url, "--model", "pol",
            "--no_progress", *extra]


# --------------------------------------------------------------------------------------- success
def test_generate_over_http(chat_server, tmp_path, capsys):
    q = write_questions(tmp_path / "in", QUESTIONS)
    out = tmp_path / "out" / "cands.json"
    assert main(args(q, out, chat_server, "--num_candidates", "3", "--temperature", "0.6", "--seed", "5")) == 0
    recs = json.loads(out.read_text())
    assert [r["id"] for r in recs] == [x["id"] for x in QUESTIONS]
    assert all(r["candidates"] == [CANNED] * 3 for r in recs)
    assert recs[0]["true_false"] == [True] * 3 and recs[1]["true_false"] == [False] * 3
    assert recs[2]["true_false"] == [True] * 3 and "true_false" not in recs[3]
    assert recs[0]["question"] == "Which colour is the bar?\nA. red\nB. green"
    assert recs[0]["options"] == ["red", "green"] and recs[1]["options"] == {"A": "red", "B": "blue"}
    assert recs[1]["answer"] == "red" and "options" not in recs[2] and "answer" not in recs[3]
    assert recs[0]["image_path"] == "../in/imgs/chart_096.png"  # relative to the output's folder
    g = recs[0]["generator"]
    assert (g["backend"], g["model"], g["prompt"], g["temperature"], g["seed"], g["greedy_first"]) == \
        ("http", "pol", "five_stage", 0.6, 5, True)
    # the greedy first candidate, then the rest sampled: 2 requests per question
    asked = sorted((r["body"]["n"], r["body"]["temperature"]) for r in chat_server.requests)
    assert asked == [(1, 0.0)] * 4 + [(2, 0.6)] * 4
    # the test format: test.py's loader takes the records that have an answer
    answered = tmp_path / "out" / "answered.json"
    answered.write_text(json.dumps(recs[:3]))
    loaded, report = load_records(answered, "test")
    assert len(loaded) == 3 and report.positives == 6
    summary = capsys.readouterr().out.strip()
    assert summary == (f"wrote {out}: 4 questions (0 kept from the earlier run), 12 candidates, 6 of 9 correct, "
                       "1 question without an answer (no true_false); 0 candidates without an 'Answer:' line")


def test_prompts_carry_the_question_options_and_format(chat_server, tmp_path):
    q = write_questions(tmp_path, QUESTIONS[:1] + QUESTIONS[2:3], name="q.jsonl")
    assert main(args(q, tmp_path / "o.json", chat_server, "--num_candidates", "1", "--prompt", "plain",
                     "--no_greedy_first")) == 0
    free, mc = sorted(set(prompts_of(chat_server)))
    assert mc.startswith("Which colour is the bar?\nA. red\nB. green\n\nSolve") and "[Reasoning]" in mc
    assert free.startswith("Name the letter.\n\nSolve")
    five = render_prompt(FIVE_STAGE, "What is x?", {"A": "1", "B": "2"})
    assert five.startswith("What is x?\nA. 1\nB. 2\n\n") and "[Reasoning]\nStep 1:" in five
    assert five.rstrip().endswith("answers the question.") and "Answer: <the final answer>" in five
    for template in (FIVE_STAGE, PLAIN):
        check_template(template)
        # a reply in the shape the prompt asks for splits into its steps and answer
        example = "[Reasoning]\nStep 1: restated.\nStep 2: evidence.\nStep 3: knowledge.\nStep 4: so B.\nAnswer: B"
        assert split_steps(example) == ["restated.", "evidence.", "knowledge.", "so B.", "Answer: B"]
        assert extract_answer(example) == "B"


def test_template_file(chat_server, tmp_path):
    tpl = tmp_path / "tpl.txt"
    tpl.write_text("Q: {question}\nChoices:\n{options}\nJSON braces: {{}}\n")
    q = write_questions(tmp_path, QUESTIONS[:1])
    assert main(args(q, tmp_path / "o.json", chat_server, "--num_candidates", "1", "--prompt", str(tpl))) == 0
    assert prompts_of(chat_server)[0] == "Q: Which colour is the bar?\nChoices:\nA. red\nB. green\nJSON braces: {}"
    assert json.loads((tmp_path / "o.json").read_text())[0]["generator"]["prompt"] == str(tpl)


def test_candidates_without_answer_are_kept_and_counted(chat_server, tmp_path, capsys):
    chat_server.reply = lambda body, k: "[Reasoning]\nStep 1: thinking." if k == 0 else CANNED
    q = write_questions(tmp_path, QUESTIONS[:2])
    assert main(args(q, tmp_path / "o.json", chat_server, "--num_candidates", "2", "--no_greedy_first")) == 0
    recs = json.loads((tmp_path / "o.json").read_text())
    assert recs[0]["candidates"][0] == "[Reasoning]\nStep 1: thinking." and recs[0]["true_false"] == [False, True]
    assert capsys.readouterr().out.strip().endswith("2 candidates without an 'Answer:' line")


# ---------------------------------------------------------------------------------------- resume
def test_resume_requests_only_the_missing_questions(chat_server, tmp_path, capsys):
    q = write_questions(tmp_path, QUESTIONS)
    out = tmp_path / "o.json"
    assert main(args(q, out, chat_server, "--num_candidates", "2")) == 0
    recs = json.loads(out.read_text())
    recs[0]["candidates"] = ["old 1", "old 2"]  # complete: kept as it is (true_false recomputed)
    recs[2]["candidates"] = recs[2]["candidates"][:1]  # too few: regenerated
    out.write_text(json.dumps([recs[0], recs[2], recs[3]]))  # question 1 missing
    chat_server.requests.clear()
    capsys.readouterr()
    assert main(args(q, out, chat_server, "--num_candidates", "2")) == 0
    asked = set(prompts_of(chat_server))
    assert {p.split("\n")[0] for p in asked} == {"Which colour is the ball?", "Name the letter."}
    assert len(chat_server.requests) == 4  # greedy + sampled, for each of the 2
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "2 questions already have 2 candidates; generating 2 of 4" in captured.err
    assert "(2 kept from the earlier run)" in captured.out
    new = json.loads(out.read_text())
    assert [r["id"] for r in new] == [x["id"] for x in QUESTIONS]
    assert new[0]["candidates"] == ["old 1", "old 2"] and new[0]["true_false"] == [False, False]
    assert all(len(r["candidates"]) == 2 for r in new)
    # nothing left to do: no request, and no model is loaded
    chat_server.requests.clear()
    assert main(args(q, out, chat_server, "--num_candidates", "2")) == 0
    assert chat_server.requests == []
    # --overwrite starts afresh
    assert main(args(q, out, chat_server, "--num_candidates", "2", "--overwrite")) == 0
    assert len(chat_server.requests) == 8


def test_a_changed_question_is_regenerated_and_foreign_output_refused(chat_server, tmp_path, capsys):
    q = write_questions(tmp_path, QUESTIONS[:2])
    out = tmp_path / "o.json"
    assert main(args(q, out, chat_server, "--num_candidates", "1")) == 0
    changed = [dict(QUESTIONS[0], question="Which colour is the long bar?"), QUESTIONS[1]]
    write_questions(tmp_path, changed)
    chat_server.requests.clear()
    assert main(args(q, out, chat_server, "--num_candidates", "1")) == 0
    assert [p.split("\n")[0] for p in prompts_of(chat_server)] == ["Which colour is the long bar?"]
    write_questions(tmp_path, QUESTIONS[1:2])
    capsys.readouterr()
    assert main(args(q, out, chat_server, "--num_candidates", "1")) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {out}: holds 1 question not in the questions file ('mc_right'); "
                   "give another --output, or --overwrite to replace it\n")


# ---------------------------------------------------------------------------------------- errors
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("change, where, message", [
    ({"image": "imgs/nope.png"}, 2, "field 'image': image not found: "),
    ({"answer": ""}, 2, "field 'answer': is empty"),
    ({"answer": []}, 2, "field 'answer': is empty"),
    ({"answer": "Z"}, 1, "field 'answer': 'Z' is not one of the option letters AB"),
    ({"question": "  "}, 1, "field 'question': missing, empty or not a string"),
    ({"id": ""}, 1, "field 'id': missing, empty or not a string"),
    ({"id": "mc_right"}, 2, "field 'id': duplicate of "),
    ({"options": [1, 2]}, 1, "field 'options': must be a list of strings"),
    ({"answer": True}, 1, "field 'answer': must be a string, a number or a list of them"),
])
def test_bad_question_is_one_line(chat_server, tmp_path, capsys, change, where, message):
    recs = [dict(r) for r in QUESTIONS[:2]]
    recs[where - 1].update(change)
    q = write_questions(tmp_path, recs)
    assert main(args(q, tmp_path / "o.json", chat_server, "--num_candidates", "1")) == 2
    assert one_error_line(capsys).startswith(f"error: {q}:{where}: {message}")
    assert chat_server.requests == [] and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("template, message", [
    ("Q: {question} {answer}", "unknown placeholder {answer}"),
    ("Q: {question} {}", "unknown placeholder {}"),
    ("Q: {question} }", "Single '}' encountered"),
    ("no question here {options}", "has no {question} placeholder"),
])
def test_bad_template_is_one_line(chat_server, tmp_path, capsys, template, message):
    tpl = tmp_path / "t.txt"
    tpl.write_text(template)
    q = write_questions(tmp_path, QUESTIONS[:1])
    assert main(args(q, tmp_path / "o.json", chat_server, "--num_candidates", "1", "--prompt", str(tpl))) == 2
    assert message in one_error_line(capsys) and chat_server.requests == []


@pytest.mark.parametrize("flags, message", [
    (["--num_candidates", "0"], "--num_candidates must be at least 1"),
    (["--num_candidates", "1", "--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--num_candidates", "1", "--prompt", "fancy"], "--prompt fancy: neither five_stage nor plain nor a template"),
])
def test_bad_flags_are_one_line(chat_server, tmp_path, capsys, flags, message):
    q = write_questions(tmp_path, QUESTIONS[:1])
    assert main(args(q, tmp_path / "o.json", chat_server, *flags)) == 2
    assert message in one_error_line(capsys)


def test_unreachable_endpoint_is_one_line(tmp_path, capsys):
    q = write_questions(tmp_path, QUESTIONS[:1])
    url = closed_port_url()
    assert main(["--questions", str(q), "--output", str(tmp_path / "o.json"), "--num_candidates", "1",
                 "--base_url", url, "--model", "m", "--retries", "0", "--no_progress"]) == 2
    assert one_error_line(capsys).startswith(f"error: cannot reach {url}/chat/completions: ")
    assert not (tmp_path / "o.json").exists()


def test_persistent_malformed_replies_stop_with_finished_questions_saved(chat_server, tmp_path, capsys):
    chat_server.fail_if = lambda body: "Which colour is the ball?" in json.dumps(body)
    q = write_questions(tmp_path, QUESTIONS[:3])
    out = tmp_path / "o.json"
    assert main(args(q, out, chat_server, "--num_candidates", "1", "--retries", "0", "--concurrency", "1")) == 2
    assert one_error_line(capsys) == (f"error: {chat_server.url}/chat/completions: HTTP 500 Internal Server Error: "
                                      '{"error": {"message": "scripted failure"}} (1 attempt)')
    assert [r["id"] for r in json.loads(out.read_text())] == ["mc_right"]  # saved before the failure
    chat_server.fail_if = None
    chat_server.fail = ["500"]  # retried (after the default 0.5 s), then fine
    chat_server.requests.clear()
    assert main(args(q, out, chat_server, "--num_candidates", "1", "--concurrency", "1")) == 0
    assert len(chat_server.requests) == 3  # the other two questions, one of them twice
    assert capsys.readouterr().out.strip().endswith("; 1 retry of failed requests")


def test_ctrl_c_saves_the_finished_questions_and_exits_130(chat_server, tmp_path, capsys, monkeypatch):
    real = HttpPolicy.sample_many

    def interrupted(self, jobs, **kw):
        it = real(self, jobs, **kw)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(HttpPolicy, "sample_many", interrupted)
    q = write_questions(tmp_path, QUESTIONS)
    out = tmp_path / "o.json"
    assert main(args(q, out, chat_server, "--num_candidates", "1", "--concurrency", "1")) == 130
    assert len(json.loads(out.read_text())) == 1
    assert capsys.readouterr().err.strip() == (f"interrupted: {out} holds 1 of 4 questions; "
                                               "run the same command again to resume")


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; import dreamprm.generate; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# ------------------------------------------------------------------------------------ tiny model
@pytest.mark.slow
def test_tiny_model_cli_greedy_first_and_seeded(tiny_dir, tmp_path):
    """Two questions from data/questions.json, 2 candidates each: the first greedy (the same under
    another seed), the whole output the same under the same seed."""
    qs = json.loads((DATA / "questions.json").read_text())[:2]
    for rec in qs:
        rec["image"] = "imgs/" + Path(rec["image"]).name
    q = write_questions(tmp_path, qs)
    flags = ["--questions", str(q), "--model", "tiny", "--num_candidates", "2", "--max_new_tokens", "8",
             "--device", "cpu", "--no_progress"]
    env = dict(os.environ, DREAMPRM_TINY_DIR=str(tiny_dir))
    proc = subprocess.run([sys.executable, "-m", "dreamprm.generate", *flags, "--output", str(tmp_path / "a.json")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {tmp_path / 'a.json'}: 2 questions")
    assert main([*flags, "--output", str(tmp_path / "b.json")]) == 0
    assert main([*flags, "--output", str(tmp_path / "c.json"), "--seed", "1"]) == 0
    a, b, c = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "abc")
    assert [len(r["candidates"]) for r in a] == [2, 2] and all(len(r["true_false"]) == 2 for r in a)
    assert a == b  # same seed: the same output
    assert [r["candidates"][0] for r in c] == [r["candidates"][0] for r in a]  # greedy first
    assert [r["candidates"][1] for r in c] != [r["candidates"][1] for r in a]
    assert a[0]["image_path"] == "imgs/" + Path(qs[0]["image"]).name


def test_meta_output_is_a_meta_set_of_the_answered_candidates(chat_server, tmp_path, capsys):
    q = write_questions(tmp_path / "in", QUESTIONS)
    out, meta = tmp_path / "out" / "cands.json", tmp_path / "meta" / "meta.json"
    assert main(args(q, out, chat_server, "--num_candidates", "2", "--meta_output", str(meta))) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {meta}: 6 meta records"
    cands = json.loads(out.read_text())
    records, report = load_records(meta, "meta")  # train.py --meta_json_file takes it
    assert [r["id"] for r in records] == [f"{c['id']}#{k}" for c in cands[:3] for k in range(2)]
    assert [r["true_false"] for r in records] == [ok for c in cands[:3] for ok in c["true_false"]]
    assert records[0]["image"] == "../in/imgs/chart_096.png"  # relative to the meta file's folder
    steps = [t["value"] for t in records[0]["conversations"] if t["from"] == "human"][1:]
    assert steps == split_steps(CANNED, "upstream")
    assert [t["value"] for t in records[0]["conversations"] if t["from"] == "gpt"] == ["+"] * len(steps)
