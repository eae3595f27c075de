"""Monte-Carlo step labels (dreamprm.mc_label): values and labels against a toy rule, the rollout
cache (reruns and resumed runs), the CLI with the tiny model, and one-line input errors."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dreamprm import mc_label
from dreamprm.mc_label import (CONTINUE_INSTRUCTION, RolloutCache, label_question, label_questions, main, mc_values,
                               read_questions, solution_steps)
from dreamprm.policy import Policy, PolicyError
from dreamprm.records import load_records

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "data" / "images" / "chart_000.png"

GOOD = "[Reasoning]\nStep 1: Look at the three bars.\nStep 2: The blue bar is the tallest.\nAnswer: B"
BAD = ("[Reasoning]\nStep 1: Look at the three bars.\nStep 2: Read the red bar as tallest, which is wrong.\n"
       "Step 3: So the red one.\nAnswer: A")
QUESTION = {"id": "q1", "question": "Which bar is the tallest?", "options": ["red", "blue", "green"],
            "answer": "B", "image": str(IMAGE)}


class RulePolicy(Policy):
    """A policy stand-in with a known Monte-Carlo value per prefix.

    A continuation ends with the right answer (``right``, or per question ``{question text:
    answer}``) exactly when the solution so far has no step with the word "wrong"; after such a
    step the first ``lucky`` of a request's rollouts still end right. A solving prompt (no
    partial solution) gets ``solutions`` in turn. ``calls`` counts requests (the base class runs
    them one at a time: ``concurrency`` is 1), ``texts`` the texts returned; ``fail_after``
    raises ``fail`` on the next request."""

    def __init__(self, right=None, wrong="C", lucky=0, solutions=(GOOD, BAD), fail_after=None,
                 fail=KeyboardInterrupt):
        super().__init__(seed=0)
        right = {"Which bar": "B", "How many": "3"} if right is None else right
        self.right, self.wrong, self.lucky, self.solutions = right, wrong, lucky, list(solutions)
        self.fail_after, self.fail = fail_after, fail
        self.calls = self.texts = 0

    def _sample(self, job, seed, stop, **sampling):  # the base class's sample/sample_many call this
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise self.fail()
        self.calls += 1
        self.texts += job.n
        if CONTINUE_INSTRUCTION not in job.prompt:
            return [self.solutions[i % len(self.solutions)] for i in range(job.n)]
        partial = job.prompt.rsplit("[Reasoning]", 1)[1]
        right = self.right
        if isinstance(right, dict):
            right = next(a for q, a in right.items() if q in job.prompt)
        ok = ["wrong" not in partial or i < self.lucky for i in range(job.n)]
        return [f"Step 9: Finish.\nAnswer: {right if o else self.wrong}" for o in ok]

    def describe(self):
        return {"backend": "rule"}


def labels(rec):
    return "".join(t["value"] for t in rec["conversations"] if t["from"] == "gpt")


# ----------------------------------------------------------------------------------------------
# values and labels
# ----------------------------------------------------------------------------------------------
def test_values_and_labels_follow_the_rule():
    policy = RulePolicy()
    good, bad = label_question(policy, QUESTION, [GOOD, BAD], rollouts=4)
    # every prefix but the answer step is rolled out: 2 + 3 requests of 4
    assert (policy.calls, policy.texts) == (5, 20)
    assert good["mc_values"] == [1.0, 1.0, 1.0] and labels(good) == "+++"
    assert bad["mc_values"] == [1.0, 0.0, 0.0, 0.0] and labels(bad) == "+---"
    assert [good["id"], bad["id"]] == ["q1-s0", "q1-s1"]
    conv = bad["conversations"]
    assert conv[0] == {"from": "human", "value": "### Question:\nWhich bar is the tallest?\nA. red\nB. blue\nC. green"}
    assert [t["value"] for t in conv[1::2]] == solution_steps(BAD)[0]
    assert conv[-2]["value"] == "Answer: A"


def test_fractional_values_and_the_threshold():
    bad, = label_question(RulePolicy(lucky=1), QUESTION, [BAD], rollouts=4, mc_threshold=0.3)
    assert bad["mc_values"] == [1.0, 0.25, 0.25, 0.0] and labels(bad) == "+---"
    bad, = label_question(RulePolicy(lucky=1), QUESTION, [BAD], rollouts=4)  # VisualPRM: > 0
    assert labels(bad) == "+++-"
    bad, = label_question(RulePolicy(lucky=3), QUESTION, [BAD], rollouts=4, mc_threshold=0.5)
    assert bad["mc_values"] == [1.0, 0.75, 0.75, 0.0] and labels(bad) == "+++-"


def test_identical_solutions_share_their_rollouts_and_threads_change_nothing():
    policy = RulePolicy()
    serial = label_question(policy, QUESTION, [GOOD, BAD, GOOD], rollouts=4)
    assert policy.calls == 5 and [r["id"] for r in serial] == ["q1-s0", "q1-s1", "q1-s2"]
    threaded = RulePolicy()
    threaded.concurrency = 4  # the base class's sample_many then runs requests in threads, any order
    assert label_question(threaded, QUESTION, [GOOD, BAD, GOOD], rollouts=4) == serial


def test_mc_values_directly():
    steps = solution_steps(BAD)[0]
    right, wrong = "Answer: B", "Answer: C"
    rollouts = [[right, right], [right, wrong], [wrong, wrong]]
    assert mc_values(QUESTION, steps, rollouts, final_correct=False) == [1.0, 0.5, 0.0, 0.0]
    assert mc_values(QUESTION, steps, rollouts + [[right, wrong]]) == [1.0, 0.5, 0.0, 0.5]
    with pytest.raises(ValueError):
        mc_values(QUESTION, steps, rollouts)  # without final_correct every step needs rollouts


def test_max_steps_keeps_the_first_steps_and_rolls_out_all_of_them():
    stats = Counter()
    policy = RulePolicy()
    bad, = label_question(policy, QUESTION, [BAD], rollouts=2, max_steps=2, stats=stats)
    assert bad["mc_values"] == [1.0, 0.0] and labels(bad) == "+-"
    assert policy.calls == 2  # no answer step left: both kept steps are rolled out
    assert (stats["solutions_truncated"], stats["steps_dropped"]) == (1, 2)


def test_sampled_solutions_and_the_output_loads(tmp_path):
    question = {k: v for k, v in QUESTION.items()}
    policy = RulePolicy(solutions=[GOOD, BAD])
    records, stats = label_questions(policy, [question], rollouts=2, num_solutions=2, progress=False)
    assert [labels(r) for r in records] == ["+++", "+---"]
    assert stats["solutions_sampled"] == 2 and stats["records"] == 2
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    kept, report = load_records(path, "train")
    assert len(kept) == 2 and (report.positives, report.negatives) == (4, 3)


# ----------------------------------------------------------------------------------------------
# the CLI around a stand-in policy: cache, rerun, resume, errors
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def questions_file(tmp_path):
    """Two questions in tmp/in/, their image in tmp/img/ (a path relative to the questions file)."""
    (tmp_path / "img").mkdir()
    shutil.copy(IMAGE, tmp_path / "img" / "chart.png")
    (tmp_path / "in").mkdir()
    qs = [{**QUESTION, "image": "../img/chart.png", "solutions": [GOOD, BAD]},
          {"id": 7, "question": "How many bars are there?", "answer": "3", "image": "../img/chart.png",
           "solutions": ["[Reasoning]\nStep 1: Count them, this is wrong.\nAnswer: 4",
                         "[Reasoning]\nStep 1: There are three.\nAnswer: 3"]}]
    path = tmp_path / "in" / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))
    return path


def run_main(monkeypatch, policy, questions, output, *extra):
    monkeypatch.setattr(mc_label, "load_policy", lambda *a, **k: policy)
    return main(["--questions", str(questions), "--output", str(output), "--rollouts", "3",
                 "--policy", "rule", "--no_progress", *extra])


def test_cli_writes_loadable_records(monkeypatch, questions_file, tmp_path, capsys):
    out = tmp_path / "out" / "train.json"
    assert run_main(monkeypatch, RulePolicy(), questions_file, out) == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["q1-s0", "q1-s1", "7-s0", "7-s1"]
    assert [labels(r) for r in records] == ["+++", "+---", "--", "++"]
    assert {r["dataset"] for r in records} == {"q"}  # the questions file's stem
    assert records[0]["image"] == os.path.join("..", "img", "chart.png")  # relative to the output
    kept, _ = load_records(out, "train")
    assert len(kept) == 4
    counts = json.loads(capsys.readouterr().out)
    assert counts["records"] == 4 and counts["requests_made"] == 2 + 3 + 1 + 1
    assert (tmp_path / "out" / "train.rollouts.jsonl").exists()


def test_rerun_makes_no_request_and_writes_the_same_output(monkeypatch, questions_file, tmp_path):
    out = tmp_path / "train.json"
    first = RulePolicy()
    assert run_main(monkeypatch, first, questions_file, out, "--dataset", "charts") == 0
    before = out.read_bytes()
    again = RulePolicy(right="never", wrong="never")  # would change every value if asked
    assert run_main(monkeypatch, again, questions_file, out, "--dataset", "charts") == 0
    assert again.calls == 0 and first.calls == 7
    assert out.read_bytes() == before


def test_interrupted_run_resumes_from_the_cache(monkeypatch, questions_file, tmp_path, capsys):
    reference = tmp_path / "ref" / "train.json"
    assert run_main(monkeypatch, RulePolicy(), questions_file, reference) == 0
    out, cache = tmp_path / "run" / "train.json", tmp_path / "run" / "cache.jsonl"
    capsys.readouterr()
    killed = RulePolicy(fail_after=4)
    assert run_main(monkeypatch, killed, questions_file, out, "--cache", str(cache)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and len(cache.read_text().splitlines()) == 4
    resumed = RulePolicy()
    assert run_main(monkeypatch, resumed, questions_file, out, "--cache", str(cache)) == 0
    assert resumed.calls == 7 - 4
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_cache_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = RolloutCache(path)
    cache.put(("q", "h", 1, "p"), ["a", "b"])
    cache.close()
    with path.open("a") as f:
        f.write('{"question": "q", "solution": "h", "prefix": 2, "pro')  # killed mid-write
    cache = RolloutCache(path)
    assert cache.bad_lines == 1 and cache.get(("q", "h", 1, "p"), 2) == ["a", "b"]
    assert cache.get(("q", "h", 1, "p"), 3) is None  # fewer than asked for: request again
    cache.put(("q", "h", 2, "p"), ["c"])
    cache.close()
    assert RolloutCache(path).get(("q", "h", 2, "p"), 1) == ["c"]


def write_questions(tmp_path, **changes):
    q = {**QUESTION, "solutions": [GOOD], **changes}
    q = {k: v for k, v in q.items() if v is not None}
    path = tmp_path / "q.json"
    path.write_text(json.dumps([q]))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"answer": None}, "field 'answer': missing"),
    ({"answer": ""}, "field 'answer': missing"),
    ({"answer": "E"}, "field 'answer': 'E' is not one of the option letters ABC"),
    ({"image": "no/such.png"}, "field 'image': image not found: "),
    ({"solutions": "text"}, "field 'solutions': must be a list"),
])
def test_bad_questions_are_one_line_errors(monkeypatch, tmp_path, capsys, changes, message):
    path = write_questions(tmp_path, **changes)

    def no_policy(*a, **k):
        raise AssertionError("the policy must not load for bad input")

    monkeypatch.setattr(mc_label, "load_policy", no_policy)
    code = main(["--questions", str(path), "--output", str(tmp_path / "o.json"), "--rollouts", "2",
                 "--policy", "tiny", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}:1: {message}")


def test_missing_solutions_need_num_solutions(monkeypatch, tmp_path, capsys):
    path = write_questions(tmp_path, solutions=None)
    policy = RulePolicy()
    assert run_main(monkeypatch, policy, path, tmp_path / "o.json") == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:1: field 'solutions': missing; give --num_solutions S to sample them\n"
    assert policy.calls == 0


@pytest.mark.parametrize("flags, message", [
    (["--base_url", "http://127.0.0.1:8000/v1"], "--base_url needs --model"),
    (["--policy", "tiny", "--base_url", "http://x/v1", "--model", "m"], "not both"),
    ([], "give the policy"),
    (["--policy", "tiny", "--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--policy", "tiny", "--rollouts", "0"], "--rollouts must be at least 1"),
    (["--policy", "tiny", "--prompt", "nonesuch"], "--prompt nonesuch: neither"),
])
def test_bad_flags_are_one_line_errors(monkeypatch, tmp_path, capsys, flags, message):
    path = write_questions(tmp_path)
    monkeypatch.setattr(mc_label, "load_policy", lambda *a, **k: pytest.fail("the policy must not load"))
    code = main(["--questions", str(path), "--output", str(tmp_path / "o.json"), "--rollouts", "2", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_import_loads_no_model_library():
    """``--help`` stays instant: torch and transformers load only with a local policy."""
    code = "import sys, dreamprm.mc_label; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_policy_errors_are_one_line(monkeypatch, tmp_path, capsys):
    path = write_questions(tmp_path)

    def unreachable(*a, **k):
        raise PolicyError("http://localhost:9/v1: cannot connect (connection refused)")

    monkeypatch.setattr(mc_label, "load_policy", unreachable)
    code = main(["--questions", str(path), "--output", str(tmp_path / "o.json"), "--rollouts", "2",
                 "--base_url", "http://localhost:9/v1", "--model", "m", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: http://localhost:9/v1: cannot connect (connection refused)\n"


def test_read_questions_resolves_images_and_normalises_answers(tmp_path):
    path = write_questions(tmp_path, answer="(b)")
    q, = read_questions(path)
    assert q["answer"] == "B" and q["options"] == {"A": "red", "B": "blue", "C": "green"}
    assert Path(q["image"]).is_file()


# ----------------------------------------------------------------------------------------------
# the tiny model, for real
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_with_the_tiny_model(tiny_dir, tmp_path):
    qs = [{"id": "c0", "question": "What colour is the bar?", "image": "data/images/chart_000.png", "answer": "green",
           "solutions": ["[Reasoning]\nStep 1: There is one bar.\nStep 2: It is green.\nAnswer: green"]},
          {"id": "c1", "question": "Which option?", "options": ["one", "two"], "image": "data/images/chart_003.png",
           "answer": "A", "solutions": ["[Reasoning]\nStep 1: Count.\nAnswer: B"]}]
    questions, out = tmp_path / "q.json", tmp_path / "out" / "train.json"
    questions.write_text(json.dumps(qs))
    env = {**os.environ, "DREAMPRM_TINY_DIR": str(tiny_dir)}
    command = [sys.executable, "-m", "dreamprm.mc_label", "--policy", "tiny", "--questions", str(questions),
               "--output", str(out), "--rollouts", "2", "--max_new_tokens", "8", "--device", "cpu", "--no_progress"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policy"]["backend"] == "local"
    records, _ = load_records(out, "train")
    assert [r["id"] for r in records] == ["c0-s0", "c1-s0"]
    for r in records:
        assert labels(r) == "".join("+" if v > 0.0 else "-" for v in r["mc_values"])
        assert all(v in (0.0, 0.5, 1.0) for v in r["mc_values"])
    assert records[0]["mc_values"][-1] == 1.0 and records[1]["mc_values"][-1] == 0.0  # their own answers
    cached = (tmp_path / "out" / "train.rollouts.jsonl").read_text().splitlines()
    assert len(cached) == 2 + 1 and all(len(json.loads(line)["texts"]) == 2 for line in cached)
    # a rerun finds every request in the cache: no model loads, the output is the same
    first = out.read_bytes()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["requests_made"] == 0 and counts["policy"] == {"model": "tiny", "loaded": False}
    assert out.read_bytes() == first
