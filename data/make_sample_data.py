"""Generate the bundled sample data: ``python data/make_sample_data.py [--out DIR]``.

Every image is one solid coloured object (red, green, blue or yellow) on a neutral
background, and every question asks for its colour. A step is labelled ``+`` iff its colour
claim matches the image; neutral steps ("Let me look at the image.") are always ``+``. A
solution's claims never recover after a mistake, so this per-step rule agrees with the
PRM's "correct up to this step" reading. Three domains word questions and steps
differently (shapes, charts, scenes) and draw slightly different pictures.

``questions.json`` holds the test questions alone (id, question, image, answer; every other one
with ``options``), the input of ``python -m dreamprm.generate``.

Output is byte-for-byte reproducible: fixed seeds, PNGs without metadata, JSON written with
``indent=1, ensure_ascii=False`` and a trailing newline. Formats: README.md, "Data formats".
An output that cannot be written (``--out`` is a file, a folder without write permission)
stops the script with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

try:
    from dreamprm.jsonio import write_json
    from dreamprm.prompt import SYSTEM_PROMPT
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from dreamprm.jsonio import write_json
    from dreamprm.prompt import SYSTEM_PROMPT

COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215),
           "yellow": (235, 205, 35)}
# Includes tall and wide images so tiling sees several aspect ratios.
SIZES = [(40, 40), (64, 64), (96, 96), (120, 120), (120, 40), (40, 120), (100, 60), (60, 100),
         (120, 64), (48, 112)]
BACKGROUNDS = [(245, 245, 245), (232, 230, 222), (222, 226, 230)]
SHAPES = ["square", "circle", "triangle"]

# Per domain: question, neutral steps, claim steps, a "slip" step (a wrong second look).
DOMAINS = {
    "shapes": ("What colour is the {obj} in the image?",
               ["Let me look at the image.", "The image contains a single {obj}."],
               ["The {obj} is filled with {c}.", "Its colour is {c}."],
               "On second thought, the {obj} looks {c}."),
    "charts": ("The chart shows a single bar. What colour is the bar?",
               ["I examine the chart.", "There is one bar above the x-axis."],
               ["The bar is drawn in {c}.", "So the bar's colour is {c}."],
               "Looking again, the bar seems {c}."),
    "scenes": ("A ball lies on the ground. What colour is the ball?",
               ["Let me look at the scene.", "A ball rests on the ground."],
               ["The ball appears {c}.", "Hence the ball is {c}."],
               "Checking once more, the ball is {c}."),
}


def draw(domain: str, colour: str, size: tuple[int, int], obj: str,
         rng: random.Random) -> Image.Image:
    """One solid object of ``colour`` (with a darker outline) on a neutral background."""
    w, h = size
    fill = COLOURS[colour]
    edge = tuple(v * 3 // 5 for v in fill)
    img = Image.new("RGB", size, rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(img)
    mx, my = max(3, w // 6), max(3, h // 6)
    if domain == "charts":
        d.line([(2, 2), (2, h - 3), (w - 3, h - 3)], fill=(30, 30, 30), width=2)
        top = rng.randint(my, h // 2)
        d.rectangle([w // 3, top, 2 * w // 3, h - 4], fill=fill, outline=edge)
    elif domain == "scenes":
        d.rectangle([0, 2 * h // 3, w, h], fill=(150, 150, 150))
        r = min(w, h) // 4
        cx = rng.randint(r + 1, w - r - 2)
        d.ellipse([cx - r, 2 * h // 3 - 2 * r, cx + r, 2 * h // 3], fill=fill, outline=edge)
    elif obj == "circle":
        r = min(w - 2 * mx, h - 2 * my) // 2
        d.ellipse([w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r], fill=fill, outline=edge)
    elif obj == "triangle":
        d.polygon([(w // 2, my), (w - mx, h - my), (mx, h - my)], fill=fill, outline=edge)
    else:
        d.rectangle([mx, my, w - mx, h - my], fill=fill, outline=edge)
    return img


def solution(domain: str, obj: str, truth: str, pattern: str,
             rng: random.Random) -> tuple[list[str], list[str], str]:
    """Steps, labels and final answer. ``pattern``: right, wrong (from the start) or slip."""
    _, neutral, claims, slip = DOMAINS[domain]
    wrong = rng.choice([c for c in COLOURS if c != truth])
    first = wrong if pattern == "wrong" else truth
    picked = neutral if rng.random() < 0.5 else [rng.choice(neutral)]
    steps = [s.format(obj=obj) for s in picked]
    labels = ["+"] * len(steps)
    for tpl in claims[: rng.randint(1, 2)]:
        steps.append(tpl.format(obj=obj, c=first))
        labels.append("+" if first == truth else "-")
    answer = first
    if pattern == "slip":
        steps.append(slip.format(obj=obj, c=wrong))
        labels.append("-")
        answer = wrong
    steps.append(f"Answer: {answer}")
    labels.append("+" if answer == truth else "-")
    return steps, labels, answer


class Maker:
    """Writes images under ``out/images`` and builds the records that refer to them."""

    def __init__(self, out: Path):
        self.out = out
        self.count = 0
        (out / "images").mkdir(parents=True, exist_ok=True)

    def item(self, rng: random.Random, domain: str) -> tuple[str, str, str, str]:
        """Draw a fresh image; return (relative path, question, object name, true colour)."""
        truth = rng.choice(sorted(COLOURS))
        obj = {"charts": "bar", "scenes": "ball"}.get(domain) or rng.choice(SHAPES)
        img = draw(domain, truth, rng.choice(SIZES), obj, rng)
        rel = f"images/{domain[:-1]}_{self.count:03d}.png"
        img.save(self.out / rel, format="PNG", optimize=False, compress_level=9)
        self.count += 1
        return rel, DOMAINS[domain][0].format(obj=obj), obj, truth

    def records(self, n: int, seed: int, prefix: str | None, meta: bool = False) -> list[dict]:
        """Training-format records; ``meta`` makes balanced true/false candidates with + turns."""
        rng = random.Random(seed)
        recs = []
        for k in range(n):
            domain = sorted(DOMAINS)[k % len(DOMAINS)]
            rel, question, obj, truth = self.item(rng, domain)
            if meta:
                pattern = "right" if k % 2 == 0 else rng.choice(["wrong", "slip"])
            else:
                pattern = rng.choice(["right", "right", "wrong", "slip"])
            steps, labels, answer = solution(domain, obj, truth, pattern, rng)
            if meta:
                labels = ["+"] * len(steps)
            conv = [{"from": "system", "value": SYSTEM_PROMPT}] if k % 3 != 2 else []
            conv.append({"from": "human", "value": f"### Question:\n{question}"})
            for step, label in zip(steps, labels):
                conv += [{"from": "human", "value": step}, {"from": "gpt", "value": label}]
            rec = {"id": f"{prefix}_{k:03d}" if prefix else k, "image": rel, "conversations": conv,
                   "dataset": domain}
            if meta:
                rec["true_false"] = answer == truth
            recs.append(rec)
        return recs

    def test(self, n: int, seed: int) -> tuple[list[dict], list[dict]]:
        """Best-of-N questions (question 0 all right, question 1 all wrong, the rest mixed) and
        the same questions without candidates, with their answers (every other one as multiple
        choice among the four colours), for ``python -m dreamprm.generate``."""
        rng = random.Random(seed)
        recs, questions = [], []
        for k in range(n):
            domain = sorted(DOMAINS)[k % len(DOMAINS)]
            rel, question, obj, truth = self.item(rng, domain)
            q = {"id": f"test_{k:03d}", "question": question, "image": rel}
            if k % 2:
                q["options"] = sorted(COLOURS)
                q["answer"] = "ABCD"[sorted(COLOURS).index(truth)]
            else:
                q["answer"] = truth
            questions.append(q)
            n_cand = rng.randint(4, 8)
            if k == 0:
                patterns = ["right"] * n_cand
            elif k == 1:
                patterns = [rng.choice(["wrong", "slip"]) for _ in range(n_cand)]
            else:
                others = [rng.choice(["right", "wrong", "slip"]) for _ in range(n_cand - 1)]
                patterns = ["right"] + others
                rng.shuffle(patterns)
            cands, tf = [], []
            for p in patterns:
                steps, _, answer = solution(domain, obj, truth, p, rng)
                body = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps[:-1], 1))
                cands.append(f"[Reasoning]\n{body}\n{steps[-1]}")
                tf.append(answer == truth)
            recs.append({"id": f"test_{k:03d}", "question": question, "image_path": rel,
                         "candidates": cands, "true_false": tf})
        return recs, questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", "-o", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: next to this script)")
    out = parser.parse_args(argv).out
    try:
        if out.exists() and not out.is_dir():
            print(f"error: {out}: is a file; --out takes a folder", file=sys.stderr)
            return 2
        maker = Maker(out)
        write_json(out / "train.json", maker.records(48, seed=1, prefix="train"))
        write_json(out / "coldstart.json", maker.records(32, seed=2, prefix=None))
        write_json(out / "meta.json", maker.records(16, seed=3, prefix="meta", meta=True))
        test, questions = maker.test(8, seed=4)
        write_json(out / "test.json", test)
        write_json(out / "questions.json", questions)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        where = getattr(exc, "filename", None) or out
        print(f"error: {where}: cannot write ({getattr(exc, 'strerror', None) or exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
