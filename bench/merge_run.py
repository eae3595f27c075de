"""Merge a run folder that came back from a GPU machine into a run folder of the repository.

    python bench/merge_run.py SRC bench/runs/<date>-<gpu>

The rows of SRC's ``results.json`` and ``scaling.json`` are appended to DST's, and
``bench_log.txt`` to DST's (what DST already holds is not repeated, so merging twice changes
nothing). A figure DST already holds in another version is kept, since it is drawn from the rows:
redraw it after the merge (``plot_results.py DST``, ``scaling.py --plot DST``). Any other file is
copied, and one that DST already holds with other contents is an error (nothing is merged then).
Text files are stripped of progress bars on the way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

try:  # as bench.merge_run (tests) or as a script, whose folder is on sys.path
    from .runfiles import clean_log
except ImportError:
    from runfiles import clean_log

ROWS = ("results.json", "scaling.json")  # lists of rows, appended
APPENDED = (*ROWS, "bench_log.txt")
FIGURES = {"results.png": "python bench/plot_results.py", "scaling.png": "python bench/scaling.py --plot"}


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # keep carriage returns for clean_log
        return f.read()


def _clean(path: Path) -> str:
    return clean_log(_read(path))


def merge(src: Path, dst: Path) -> list[str]:
    """Merge ``src`` into ``dst``; returns one line per file, saying what was done."""
    files = sorted(p for p in src.iterdir() if p.is_file())
    clashes = [p.name for p in files if p.name not in APPENDED and p.name not in FIGURES and (dst / p.name).exists()
               and (dst / p.name).read_bytes() != p.read_bytes()
               and not (p.suffix == ".txt" and _clean(p) == _read(dst / p.name))]
    if clashes:
        raise SystemExit(f"{dst} already holds other versions of: {', '.join(clashes)} (nothing merged)")
    dst.mkdir(parents=True, exist_ok=True)
    done = []
    for p in files:
        target = dst / p.name
        if p.name in FIGURES and target.exists() and target.read_bytes() != p.read_bytes():
            done.append(f"{target}: kept (redraw it from the merged rows: {FIGURES[p.name]} {dst})")
        elif p.name in ROWS:
            old = json.loads(target.read_text()) if target.exists() else []
            new = [row for row in json.loads(p.read_text()) if row not in old]
            target.write_text(json.dumps(old + new, indent=1) + "\n")
            done.append(f"{target}: {len(new)} rows appended ({len(old) + len(new)} in all)")
        elif p.suffix == ".txt":
            text = _clean(p)
            if p.name in APPENDED and target.exists():
                if text in _read(target):  # merged before
                    done.append(f"{target}: already holds it")
                    continue
                with open(target, "a", encoding="utf-8", newline="") as f:
                    f.write(text)
                done.append(f"{target}: appended")
            else:
                with open(target, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
                done.append(f"{target}: written")
        else:
            shutil.copyfile(p, target)
            done.append(f"{target}: copied")
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="the folder that came back (e.g. the device tool's files_at/<date>-<gpu>)")
    ap.add_argument("dst", type=Path, help="the repository's run folder, e.g. bench/runs/2026-11-22-h100")
    a = ap.parse_args()
    if not a.src.is_dir():
        raise SystemExit(f"not a folder: {a.src}")
    for line in merge(a.src, a.dst):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
