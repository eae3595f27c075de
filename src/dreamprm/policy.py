"""The policy: the model that writes solutions for an (image, prompt), e.g. best-of-N candidates.

Two backends behind one interface, :class:`Policy`, made by :func:`load_policy`:

* **local** (:class:`LocalPolicy`): a transformers vision-language model (a folder, a hub id, or
  ``tiny``) loaded with ``AutoModelForImageTextToText`` + ``AutoProcessor``; the prompt goes
  through the processor's chat template with the image, then ``generate()``. A job's n samples
  run as one batch; jobs run one after another (``concurrency`` does not apply).
* **http** (:class:`HttpPolicy`): any OpenAI-compatible chat-completions endpoint
  (``POST {base_url}/chat/completions``: vLLM, SGLang, LMDeploy, OpenAI...), the image sent as a
  base64 data URL. Standard library only; ``concurrency`` requests in flight.

Sampling is seeded per job from ``seed``, the image and the prompt (and how many times this
policy has seen that same job), so a job's samples do not depend on which other jobs run or in
what order: a resumed run samples what an uninterrupted one would have. With
``greedy_first`` the first of the n samples is the greedy one (temperature 0).

Every failure is a :class:`PolicyError` with a one-line message.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import math
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from http.client import HTTPException
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm import tqdm

# OpenAI-compatible servers accept these as data URLs; other formats are re-encoded as PNG.
_DATA_URL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
# A processor without a chat template (the bundled tiny model) gets InternVL's ChatML, with
# <IMAGE> replaced by the processor's image token (which the processor expands into the image's tokens).
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<IMAGE>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class PolicyError(Exception):
    """The policy cannot produce text: an unreachable endpoint, replies that stay malformed,
    a missing or undecodable image, a model that cannot be loaded. One-line message."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


@dataclass
class Job:
    """One request: ``n`` samples for one prompt about one image (or none)."""

    image: str | None
    prompt: str
    n: int = 1


def _one_line(text, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_sampling(job: Job, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if not isinstance(job.n, int) or job.n < 1:
        raise ValueError(f"Job.n must be a positive integer, got {job.n!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def _check_image(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"image not found: {p}")
    return p


def open_image(path) -> Image.Image:
    """The image as RGB; PolicyError naming the file when it is missing or cannot be decoded."""
    p = _check_image(path)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types for unreadable files
        raise PolicyError(f"image unreadable: {p} ({type(exc).__name__}: {_one_line(exc, 120)})") from None


@lru_cache(maxsize=64)  # a job's image is sent with every request (retries, MC rollouts of its steps)
def image_data_url(path: str) -> str:
    """``data:<mime>;base64,...`` of the image file; PolicyError naming it when missing/undecodable."""
    p = _check_image(path)
    try:
        raw = p.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            fmt = im.format
            im.load()  # decodes every pixel: a corrupt file fails here, not on the server
            if fmt not in _DATA_URL_FORMATS:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
                raw, fmt = buf.getvalue(), "PNG"
    except Exception as exc:  # PIL raises many types for unreadable files
        raise PolicyError(f"image unreadable: {p} ({type(exc).__name__}: {_one_line(exc, 120)})") from None
    return f"data:{_DATA_URL_FORMATS[fmt]};base64,{base64.b64encode(raw).decode('ascii')}"


class Policy:
    """Both backends. Subclasses implement :meth:`_sample` and :meth:`describe`."""

    backend = "base"
    concurrency = 1

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.stats: Counter = Counter()  # requests, retries, malformed replies... (for summaries)
        self._seen: Counter = Counter()
        self._lock = threading.Lock()

    def _job_seed(self, job: Job) -> int:
        """A seed for this job: from ``seed``, its image and prompt, and how often this policy has
        seen the same job (so asking twice gives new samples, reproducibly)."""
        key = json.dumps([self.seed, job.image, job.prompt])
        with self._lock:
            repeat = self._seen[key]
            self._seen[key] += 1
        digest = hashlib.sha256(f"{key}#{repeat}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def _count(self, key: str, k: int = 1) -> None:
        with self._lock:
            self.stats[key] += k

    def _sample(self, job: Job, seed: int, stop: threading.Event | None, *, temperature: float, top_p: float,
                greedy_first: bool, max_new_tokens: int) -> list[str]:
        raise NotImplementedError

    def sample(self, job: Job, *, temperature: float = 0.7, top_p: float = 0.95, greedy_first: bool = False,
               max_new_tokens: int = 1024) -> list[str]:
        """``job.n`` texts for the job (the first one greedy when ``greedy_first``)."""
        _check_sampling(job, temperature, top_p, max_new_tokens)
        return self._sample(job, self._job_seed(job), None, temperature=temperature, top_p=top_p,
                            greedy_first=greedy_first, max_new_tokens=max_new_tokens)

    def sample_many(self, jobs: Sequence[Job], *, temperature: float = 0.7, top_p: float = 0.95,
                    greedy_first: bool = False, max_new_tokens: int = 1024, progress: bool = True,
                    desc: str = "generating") -> Iterator[tuple[int, list[str]]]:
        """``(index into jobs, texts)`` for every job as it finishes (any order), with a tqdm bar.
        At most ``concurrency`` jobs run at once; the first PolicyError stops the rest."""
        jobs = list(jobs)
        for job in jobs:
            _check_sampling(job, temperature, top_p, max_new_tokens)
        kw = dict(temperature=temperature, top_p=top_p, greedy_first=greedy_first, max_new_tokens=max_new_tokens)
        with tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress, dynamic_ncols=True) as bar:
            if self.concurrency <= 1:
                for i, job in enumerate(jobs):
                    texts = self._sample(job, self._job_seed(job), None, **kw)
                    bar.update()
                    yield i, texts
                return
            stop = threading.Event()
            pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="policy")
            pending: dict = {}
            todo = iter(enumerate(jobs))
            try:
                while True:
                    # keep a small window submitted, so stopping early leaves little queued work
                    while len(pending) < 2 * self.concurrency:
                        nxt = next(todo, None)
                        if nxt is None:
                            break
                        i, job = nxt
                        pending[pool.submit(self._sample, job, self._job_seed(job), stop, **kw)] = i
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        texts = fut.result()  # a PolicyError ends the run here
                        bar.update()
                        yield i, texts
            finally:
                stop.set()  # requests in flight finish, but retry no more
                pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict:
        """Backend, model and settings, for the files a run writes."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# local: transformers
# ----------------------------------------------------------------------------------------------
class LocalPolicy(Policy):
    """A transformers vision-language model on this machine. Jobs run one after another (the
    ``concurrency`` of :func:`load_policy` does not apply); a job's samples run as one batch."""

    backend = "local"

    def __init__(self, model: str, *, device: str | None = None, precision: str | None = None, seed: int = 0):
        super().__init__(seed)
        # torch and transformers load here, not at import: the HTTP backend and `--help` need neither
        import torch

        from .prm import DTYPES, ModelLoadError, locate_model

        self._torch = torch
        self.name = str(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision or ("bf16" if self.device.startswith("cuda") else "fp32")
        if self.precision not in DTYPES:
            raise PolicyError(f"precision must be one of {', '.join(DTYPES)}, got {self.precision!r}")
        try:
            kind, self.path = locate_model(self.name)
            self.model, self.processor = _load_model(self.path, kind == "hub", DTYPES[self.precision])
        except ModelLoadError as exc:
            raise PolicyError(f"cannot load the policy model: {exc}") from None
        try:
            self.model.to(self.device).eval()
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise PolicyError(f"cannot use device {self.device!r}: {_one_line(exc)}") from None
        self.dtype = DTYPES[self.precision]
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        if eos is None:  # a ChatML model stops at the end of its turn
            im_end = tok.convert_tokens_to_ids("<|im_end|>")
            eos = im_end if isinstance(im_end, int) and im_end != tok.unk_token_id else tok.eos_token_id
        self.eos_token_id = eos
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else (
            eos[0] if isinstance(eos, list) else eos)
        self.chat_template = None
        if not getattr(self.processor, "chat_template", None):
            self.chat_template = _CHATML.replace("<IMAGE>", getattr(self.processor, "image_token", "<image>"))

    def _inputs(self, job: Job):
        content = ([{"type": "image"}] if job.image else []) + [{"type": "text", "text": job.prompt}]
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False)
        images = [open_image(job.image)] if job.image else None
        inputs = self.processor(images=images, text=[text], return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _generate(self, inputs, k: int, max_new_tokens: int, **sampling) -> list[str]:
        try:
            with self._torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=k,
                                          eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, **sampling)
        except self._torch.OutOfMemoryError:
            raise PolicyError(f"out of memory on {self.device} generating {k} x {max_new_tokens} tokens; "
                              "ask for fewer candidates or tokens, or use a smaller precision") from None
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]

    def _sample(self, job, seed, stop, *, temperature, top_p, greedy_first, max_new_tokens):
        inputs = self._inputs(job)
        greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        texts: list[str] = []
        if greedy_first or temperature == 0:
            texts += self._generate(inputs, 1, max_new_tokens, **greedy)
        if temperature == 0:  # greedy decoding has one answer
            texts += texts[:1] * (job.n - len(texts))
        rest = job.n - len(texts)
        if rest > 0:
            self._torch.manual_seed(seed)
            texts += self._generate(inputs, rest, max_new_tokens, do_sample=True, temperature=temperature,
                                    top_p=top_p, top_k=0)  # top_k 0: no top-k cut, as the HTTP servers
        self._count("requests")
        self._count("empty", sum(not t for t in texts))
        return texts

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.name, "path": str(self.path), "device": self.device,
                "precision": self.precision, "seed": self.seed, "concurrency": 1}


def _load_model(path: str, from_hub: bool, dtype):
    """Model and processor; an InternVL checkpoint in its original chat layout is converted in memory."""
    from .convert import CHAT, ConversionError, detect_layout
    from .prm import ModelLoadError, _load_chat, _load_native

    if not from_hub:
        try:
            layout = detect_layout(path)
        except ConversionError:
            layout = None  # not an InternVL checkpoint: any other vision-language model
        if layout == CHAT:
            return _load_chat(path, path, dtype, "sdpa")
    try:
        return _load_native(path, from_hub, dtype, "sdpa")
    except ModelLoadError:
        raise
    except Exception as exc:  # pragma: no cover - _load_native wraps what transformers raises
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# http: an OpenAI-compatible chat-completions endpoint
# ----------------------------------------------------------------------------------------------
class _Retry(Exception):
    """A failed attempt that may succeed later. ``kind``: unreachable (no connection, a timeout),
    server_error (HTTP 429/5xx, a broken connection) or malformed (the reply)."""

    def __init__(self, problem: str, kind: str, wait_s: float | None = None):
        super().__init__(problem)
        self.problem, self.kind, self.wait_s = problem, kind, wait_s


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpPolicy(Policy):
    """Chat completions at ``{base_url}/chat/completions``. Asks for ``n`` choices and again for
    any the server did not return. Connection errors, timeouts, HTTP 429/5xx and malformed
    replies (not JSON, no choices, no message content, empty text) are retried with exponential
    backoff (``retry_delay`` × 2^k, at most ``max_delay``; a 429's Retry-After is honoured up to
    ``max_delay``) up to ``retries`` times per request; other HTTP errors are not retried."""

    backend = "http"

    def __init__(self, model: str, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 retries: int = 3, timeout: float = 120.0, seed: int = 0, retry_delay: float = 0.5,
                 max_delay: float = 30.0):
        super().__init__(seed)
        parsed = urllib.parse.urlsplit(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PolicyError(f"base URL must start with http:// or https://, got {base_url!r}")
        if not model:
            raise PolicyError(f"name the model to ask for at {base_url} (--model NAME)")
        if concurrency < 1 or retries < 0 or not timeout > 0 or retry_delay < 0:
            raise ValueError("concurrency >= 1, retries >= 0, timeout > 0 and retry_delay >= 0 are required")
        self.model, self.base_url = str(model), base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env, self.concurrency, self.retries = api_key_env, int(concurrency), int(retries)
        self.timeout, self.retry_delay, self.max_delay = float(timeout), float(retry_delay), float(max_delay)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        # a server on this machine is reached directly, whatever http_proxy says
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(parsed.hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url, "seed": self.seed,
                "concurrency": self.concurrency, "retries": self.retries, "timeout": self.timeout,
                "api_key_env": self.api_key_env, "api_key_set": "Authorization" in self._headers}

    def _messages(self, job: Job) -> list[dict]:
        content = []
        if job.image:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(str(job.image))}})
        content.append({"type": "text", "text": job.prompt})
        return [{"role": "user", "content": content}]

    def _post(self, body: dict) -> bytes:
        """The raw reply; _Retry for what may pass, PolicyError for what will not."""
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=self._headers,
                                     method="POST")
        self._count("requests")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = _one_line(exc.read().decode("utf-8", "replace"), 160)
            except Exception:
                detail = ""
            problem = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code == 429 or exc.code >= 500:
                after = exc.headers.get("Retry-After") if exc.headers else None
                wait_s = float(after) if after and re.fullmatch(r"\d+(\.\d+)?", after.strip()) else None
                raise _Retry(problem, "server_error", wait_s) from None
            hint = {401: f" (is ${self.api_key_env} set to a valid key?)",
                    403: f" (is ${self.api_key_env} set to a valid key?)",
                    404: " (is --base_url right? OpenAI-compatible servers usually serve under /v1)"}.get(exc.code, "")
            raise PolicyError(f"{self.url}: {problem}{hint}") from None
        except urllib.error.URLError as exc:
            raise _Retry(_one_line(exc.reason), "unreachable") from None
        except TimeoutError:
            raise _Retry(f"no reply within {self.timeout:g} s", "unreachable") from None
        except (HTTPException, ConnectionError) as exc:
            raise _Retry(f"connection broken ({type(exc).__name__}: {_one_line(exc, 120)})", "server_error") from None
        except OSError as exc:
            raise _Retry(_one_line(exc), "unreachable") from None

    @staticmethod
    def _texts(raw: bytes) -> tuple[list[str], int]:
        """The non-empty texts of a reply and how many choices were empty; _Retry when malformed."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Retry(f"reply is not JSON: {_one_line(raw[:80].decode('utf-8', 'replace'), 80)!r}",
                         "malformed") from None
        if isinstance(data, dict) and data.get("error"):
            err = data["error"]
            raise _Retry(f"server error: {_one_line(err.get('message', err) if isinstance(err, dict) else err)}",
                         "server_error")
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise _Retry("reply has no choices", "malformed")
        texts, empty = [], 0
        for choice in choices:
            msg = choice.get("message") if isinstance(choice, dict) else None
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise _Retry("reply has a choice without message content", "malformed")
            if content.strip():
                texts.append(content.strip())
            else:
                empty += 1
        if not texts:
            raise _Retry("reply holds only empty texts", "malformed")
        return texts, empty

    def _request(self, job: Job, n: int, seed: int, stop, temperature: float, top_p: float,
                 max_new_tokens: int) -> list[str]:
        """Up to ``n`` texts from one request, retried as the class docstring says."""
        body = {"model": self.model, "messages": self._messages(job), "n": n, "temperature": temperature,
                "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed}
        failures = 0
        while True:
            try:
                texts, empty = self._texts(self._post(body))
                if empty:
                    self._count("malformed", empty)
                return texts[:n]
            except _Retry as exc:
                failures += 1
                self._count(exc.kind)
                if failures > self.retries or (stop is not None and stop.is_set()):
                    tries = f"{failures} attempt" + ("s" if failures > 1 else "")
                    if exc.kind == "unreachable":
                        raise PolicyError(f"cannot reach {self.url}: {exc.problem} ({tries})") from None
                    raise PolicyError(f"{self.url}: {exc.problem} ({tries})") from None
                self._count("retries")
                delay = min(self.retry_delay * 2 ** (failures - 1), self.max_delay)
                if exc.wait_s is not None:
                    delay = max(delay, min(exc.wait_s, self.max_delay))
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)

    def _sample(self, job, seed, stop, *, temperature, top_p, greedy_first, max_new_tokens):
        texts: list[str] = []
        if greedy_first:
            texts += self._request(job, 1, seed, stop, 0.0, 1.0, max_new_tokens)
        asks = 0
        while len(texts) < job.n:  # a server may return fewer choices than asked: ask for the rest
            asks += 1
            got = self._request(job, job.n - len(texts), (seed + asks) & 0x7FFFFFFF, stop, temperature, top_p,
                                max_new_tokens)
            texts += got
        return texts


def add_policy_flags(ap) -> None:
    """The flags ``generate`` and ``mc_label`` share: the endpoint's key, sampling, the HTTP client
    and the local model's device and precision (each command names its model flags itself)."""
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY",
                    help="environment variable holding the endpoint's API key (default: %(default)s; none when unset)")
    ap.add_argument("--temperature", type=float, default=0.7, help="default: %(default)s")
    ap.add_argument("--top_p", type=float, default=0.95, help="default: %(default)s")
    ap.add_argument("--max_new_tokens", type=int, default=1024, help="default: %(default)s")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=8, help="--base_url: requests in flight (default: %(default)s)")
    ap.add_argument("--retries", type=int, default=3,
                    help="--base_url: retries of a failed request (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="--base_url: seconds per request (default: %(default)s)")
    ap.add_argument("--device", default=None, help="local model: cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                    help="local model weights (default: bf16 on cuda, fp32 on cpu)")


def policy_flag_problem(args) -> str | None:
    """What is wrong with the flags of :func:`add_policy_flags`, or None."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        return f"--temperature must be >= 0 (got {args.temperature})"
    if not 0 < args.top_p <= 1:
        return f"--top_p must be in (0, 1] (got {args.top_p})"
    for flag in ("max_new_tokens", "concurrency"):
        if getattr(args, flag) < 1:
            return f"--{flag} must be at least 1 (got {getattr(args, flag)})"
    if args.retries < 0:
        return f"--retries must be >= 0 (got {args.retries})"
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        return f"--timeout must be > 0 (got {args.timeout})"
    return None


def load_policy(model: str | None = None, base_url: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
                device: str | None = None, precision: str | None = None, concurrency: int = 8, retries: int = 3,
                timeout: float = 120.0, seed: int = 0, retry_delay: float = 0.5) -> Policy:
    """The HTTP backend when ``base_url`` is given (``model`` names the served model), else the
    local one (``model``: a folder, a hub id or ``tiny``). ``device``/``precision`` apply to the
    local backend (default: cuda and bf16 when available, else cpu and fp32); ``concurrency``,
    ``retries``, ``timeout``, ``api_key_env`` and ``retry_delay`` to the HTTP one."""
    if base_url:
        return HttpPolicy(model, base_url, api_key_env=api_key_env, concurrency=concurrency, retries=retries,
                          timeout=timeout, seed=seed, retry_delay=retry_delay)
    if not model:
        raise PolicyError("no policy model: give a model folder, a hub id or 'tiny', or a --base_url")
    return LocalPolicy(model, device=device, precision=precision, seed=seed)


def exit_without_waiting(code: int) -> None:
    """End a command line run at once: an HTTP request still in flight in a worker thread would
    otherwise hold the exit for up to its timeout. Callers have saved their output already."""
    if code == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
