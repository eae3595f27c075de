"""dreamprm.policy: the HTTP backend against a real chat-completions server on 127.0.0.1 (started
here, in a thread), and the local backend with the bundled tiny InternVL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat_server import CANNED, ChatServer, closed_port_url
from dreamprm.policy import HttpPolicy, Job, PolicyError, load_policy

DATA = Path(__file__).resolve().parents[1] / "data"
IMAGE = str(DATA / "images" / "chart_096.png")


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def http_policy(server, **kw) -> HttpPolicy:
    kw.setdefault("retry_delay", 0.001)
    return load_policy(kw.pop("model", "policy-model"), server.url, **kw)


# ------------------------------------------------------------------------------------------- http
def test_success_sends_model_n_sampling_image_and_key(chat_server, monkeypatch):
    monkeypatch.setenv("TEST_POLICY_KEY", "sk-test-123")
    policy = http_policy(chat_server, api_key_env="TEST_POLICY_KEY")
    texts = policy.sample(Job(IMAGE, "What colour is the bar?", n=3), temperature=0.5, top_p=0.9, max_new_tokens=77)
    assert texts == [CANNED] * 3
    (req,) = chat_server.requests
    body = req["body"]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert body["model"] == "policy-model" and body["n"] == 3
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9 and body["max_tokens"] == 77
    (msg,) = body["messages"]
    image_part, text_part = msg["content"]
    assert msg["role"] == "user" and text_part == {"type": "text", "text": "What colour is the bar?"}
    assert image_part["type"] == "image_url"
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")  # the PNG signature
    assert policy.describe() == {"backend": "http", "model": "policy-model", "base_url": chat_server.url, "seed": 0,
                                 "concurrency": 8, "retries": 3, "timeout": 120.0, "api_key_env": "TEST_POLICY_KEY",
                                 "api_key_set": True}
    assert "sk-test" not in json.dumps(policy.describe())


def test_no_key_no_header_and_text_only_jobs(chat_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    http_policy(chat_server).sample(Job(None, "2 + 2?", n=1))
    (req,) = chat_server.requests
    assert "Authorization" not in req["headers"]
    assert req["body"]["messages"][0]["content"] == [{"type": "text", "text": "2 + 2?"}]


def test_greedy_first_then_sampled_and_fewer_choices_asked_again(chat_server):
    chat_server.max_choices = 2
    chat_server.reply = lambda body, k: f"[Reasoning]\nStep 1: t={body['temperature']} k={k}\nAnswer: B"
    texts = http_policy(chat_server).sample(Job(IMAGE, "q", n=5), temperature=0.8, greedy_first=True)
    asked = [(r["body"]["n"], r["body"]["temperature"]) for r in chat_server.requests]
    assert asked == [(1, 0.0), (4, 0.8), (2, 0.8)]  # greedy alone, then 4 asked, 2 returned, the other 2 asked
    assert len(texts) == 5 and "t=0.0 k=0" in texts[0] and all("t=0.8" in t for t in texts[1:])
    seeds = [r["body"]["seed"] for r in chat_server.requests[1:]]
    assert len(set(seeds)) == 2  # a repeated ask is a new draw, not the same samples again


@pytest.mark.parametrize("failures", [["500", "500"], ["429", "not_json"], ["no_choices", "empty"]])
def test_retries_then_success(chat_server, failures):
    chat_server.fail = list(failures)
    policy = http_policy(chat_server, retries=3)
    assert policy.sample(Job(IMAGE, "q", n=2)) == [CANNED] * 2
    assert len(chat_server.requests) == 3 and policy.stats["retries"] == 2
    assert policy.stats["requests"] == 3


def test_persistent_malformed_reply_is_one_line_naming_the_url(chat_server):
    chat_server.fail = ["not_json"] * 10
    policy = http_policy(chat_server, retries=2)
    with pytest.raises(PolicyError) as err:
        policy.sample(Job(IMAGE, "q", n=2))
    msg = str(err.value)
    assert msg == f"{chat_server.url}/chat/completions: reply is not JSON: '<html>gateway hiccup</html>' (3 attempts)"
    assert len(chat_server.requests) == 3 and policy.stats["malformed"] == 3 and policy.stats["retries"] == 2


def test_client_error_is_not_retried(chat_server):
    chat_server.fail = ["401"]
    with pytest.raises(PolicyError) as err:
        http_policy(chat_server, api_key_env="TEST_POLICY_KEY").sample(Job(IMAGE, "q"))
    assert str(err.value).startswith(f"{chat_server.url}/chat/completions: HTTP 401")
    assert "$TEST_POLICY_KEY" in str(err.value) and len(chat_server.requests) == 1


def test_unreachable_endpoint_is_one_line_with_the_url():
    url = closed_port_url()
    policy = load_policy("m", url, retries=1, retry_delay=0.001)
    with pytest.raises(PolicyError) as err:
        policy.sample(Job(IMAGE, "q"))
    msg = str(err.value)
    assert msg.startswith(f"cannot reach {url}/chat/completions: ") and "refused" in msg.lower()
    assert "\n" not in msg and msg.endswith("(2 attempts)")


def test_missing_or_undecodable_image_names_the_file(chat_server, tmp_path):
    policy = http_policy(chat_server)
    with pytest.raises(PolicyError, match=f"image not found: {tmp_path / 'nope.png'}"):
        policy.sample(Job(str(tmp_path / "nope.png"), "q"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(PolicyError, match=f"image unreadable: {bad}"):
        policy.sample(Job(str(bad), "q"))
    assert chat_server.requests == []


def test_bad_settings():
    with pytest.raises(PolicyError, match="http:// or https://"):
        load_policy("m", "127.0.0.1:8000/v1")
    with pytest.raises(PolicyError, match="name the model"):
        load_policy(None, "http://127.0.0.1:1/v1")
    with pytest.raises(PolicyError, match="model folder not found"):
        load_policy("./no/such/model")


def test_sample_many_bounded_concurrency_and_every_index_once(chat_server):
    chat_server.delay = 0.05
    chat_server.reply = lambda body, k: body["messages"][0]["content"][-1]["text"] + "\nAnswer: B"
    policy = http_policy(chat_server, concurrency=3)
    jobs = [Job(IMAGE, f"question {i}", n=2) for i in range(9)]
    results = dict(policy.sample_many(jobs, progress=False))
    assert sorted(results) == list(range(9))
    assert all(texts == [f"question {i}\nAnswer: B"] * 2 for i, texts in results.items())
    assert 2 <= chat_server.max_in_flight <= 3


def test_sample_many_stops_at_the_first_error(chat_server, tmp_path):
    policy = http_policy(chat_server, concurrency=2)
    jobs = [Job(IMAGE, "ok"), Job(str(tmp_path / "missing.png"), "bad")] + [Job(IMAGE, f"q{i}") for i in range(20)]
    with pytest.raises(PolicyError, match="image not found"):
        list(policy.sample_many(jobs, progress=False))
    assert len(chat_server.requests) < 10  # the queue is dropped, not worked through


def test_seeds_are_reproducible_per_job_and_new_for_a_repeat(chat_server):
    a, b = http_policy(chat_server, seed=7), http_policy(chat_server, seed=7)
    for policy in (a, b):
        policy.sample(Job(IMAGE, "q1"))
        policy.sample(Job(IMAGE, "q1"))
    s = [r["body"]["seed"] for r in chat_server.requests]
    assert s[:2] == s[2:] and s[0] != s[1]
    list(http_policy(chat_server, seed=7).sample_many([Job(IMAGE, "q0"), Job(IMAGE, "q1")], progress=False))
    by_prompt = {r["body"]["messages"][0]["content"][-1]["text"]: r["body"]["seed"] for r in chat_server.requests[4:]}
    assert by_prompt["q1"] == s[0] != by_prompt["q0"]  # independent of the other jobs


# ------------------------------------------------------------------------------------------ local
@pytest.fixture(scope="module")
def tiny_policy(tiny_dir):
    return load_policy("tiny", device="cpu", seed=0)


def test_local_greedy_first_and_seeded(tiny_policy, tiny_dir):
    job = Job(IMAGE, "What colour is the bar?", n=3)
    first = tiny_policy.sample(job, greedy_first=True, max_new_tokens=6)
    again = load_policy(str(tiny_dir), device="cpu", seed=0).sample(job, greedy_first=True, max_new_tokens=6)
    other = load_policy("tiny", device="cpu", seed=1).sample(job, greedy_first=True, max_new_tokens=6)
    assert len(first) == 3 and all(isinstance(t, str) for t in first)
    assert again == first  # same seed: the same samples
    assert other[0] == first[0] and other[1:] != first[1:]  # greedy does not depend on the seed
    assert tiny_policy.sample(job, greedy_first=True, max_new_tokens=6)[1:] != first[1:]  # a repeat is a new draw
    d = tiny_policy.describe()
    assert d["backend"] == "local" and d["model"] == "tiny" and d["device"] == "cpu" and d["precision"] == "fp32"


def test_local_sample_many_and_missing_image(tiny_policy, tmp_path):
    jobs = [Job(None, "Say hi.", n=2), Job(IMAGE, "Colour?", n=1)]
    out = dict(tiny_policy.sample_many(jobs, max_new_tokens=4, progress=False))
    assert sorted(out) == [0, 1] and len(out[0]) == 2 and len(out[1]) == 1
    with pytest.raises(PolicyError, match=f"image not found: {tmp_path / 'x.png'}"):
        tiny_policy.sample(Job(str(tmp_path / "x.png"), "q"), max_new_tokens=2)
