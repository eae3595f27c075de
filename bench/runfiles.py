"""Run folders (``bench/runs/<date>-<gpu>/``): their names, logs without progress-bar noise, rows, figures.

Light on purpose (no torch): ``gpu_session.sh`` and ``merge_run.py`` use it before or without
the benchmark itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "runs"  # one folder per GPU session


def gpu_slug(name: str) -> str:
    """A short lower-case name for a GPU, for run folders: "NVIDIA H100 80GB HBM3" -> "h100",
    "NVIDIA A100-SXM4-80GB" -> "a100", "NVIDIA GeForce RTX 4090" -> "rtx-4090"."""
    words = re.split(r"[\s_-]+", re.sub(r"(?i)\b(nvidia|geforce|tesla)\b", " ", name).strip())
    kept = []
    for word in words:  # the model's name ends where memory size or form factor begins
        if re.fullmatch(r"(?i)\d+gb|hbm\d*e?|pcie|sxm\d*|nvl|mig.*", word):
            break
        kept.append(word.lower())
    return "-".join(w for w in kept if w) or "gpu"


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?\s*\[")  # tqdm: " 37%|███   | 268/733 ["


def clean_line(line: str) -> str | None:
    """A log line as a reader wants it: ANSI codes removed, only what follows the last carriage
    return (what a terminal would finally show), None for a progress bar."""
    line = ANSI.sub("", line).rstrip("\r").rsplit("\r", 1)[-1]
    return None if PROGRESS_BAR.search(line) else line


def clean_log(text: str) -> str:
    """``text`` without progress bars, carriage-return updates or ANSI codes."""
    lines = [clean_line(line) for line in text.split("\n")]
    return "\n".join(line for line in lines if line is not None)


class LogTee:
    """A stream that also appends what passes through it to a log file, line by line, cleaned by
    ``clean_line`` (the terminal still sees everything)."""

    def __init__(self, stream, log):
        self.stream, self.log, self.partial = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            line = clean_line(line)
            if line is not None:
                self.log.write(line + "\n")
        self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.partial and clean_line(self.partial) is not None:
            self.log.write(clean_line(self.partial) + "\n")
        self.partial = ""
        self.log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)


def append_rows(path: Path, new: list[dict]) -> None:
    """Append rows to the JSON list in ``path`` (created if missing)."""
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + new, indent=1) + "\n")


def save_figure(fig, path: Path, title: str) -> Path:
    """Title ``fig``, lay it out, write it to ``path`` (its folder made if missing) and close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
