"""InternVL dynamic tiling arithmetic and image loading.

The model is fed through transformers' ``GotOcr2ImageProcessor`` (``crop_to_patches=True``);
``find_grid``/``count_tiles`` restate InternVL's rule so tests can prove the two agree and
so the number of ``<IMG_CONTEXT>`` tokens (256 per tile) is known without running the
processor.

Rule: among grids (cols i, rows j) with ``min_tiles <= i*j <= max_tiles``, visited in
increasing ``i*j`` (then increasing ``i``), keep the one whose ratio ``i/j`` is closest to
``width/height``. On an exact tie a later grid replaces the kept one only when the image
area exceeds half of the grid's area (``0.5 * tile_size**2 * i * j``). The image is resized
to ``(tile_size*i, tile_size*j)`` and cut row-major; a whole-image thumbnail is added when
there is more than one tile.

The order inside equal ``i*j`` cannot matter when ``min_tiles == 1``: between two such grids
``(a, b)`` and ``(c, d)`` (``a < c``) lies ``(a, d)``, strictly closer to their midpoint.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image


class ImageError(ValueError):
    """An image file is missing or cannot be decoded."""


def find_grid(
    width: int, height: int, max_tiles: int, min_tiles: int = 1, tile_size: int = 448
) -> tuple[int, int]:
    """Return the tiling grid ``(cols, rows)`` for a ``width`` x ``height`` image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = sorted(
        ((i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1)
         if min_tiles <= i * j <= max_tiles),
        key=lambda g: (g[0] * g[1], g[0]),
    )
    ratio = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for i, j in grids:
        diff = abs(ratio - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * i * j:
            best = (i, j)
    return best


def count_tiles(
    width: int, height: int, max_tiles: int, min_tiles: int = 1, tile_size: int = 448
) -> int:
    """Number of tiles fed to the vision encoder, thumbnail included."""
    cols, rows = find_grid(width, height, max_tiles, min_tiles, tile_size)
    n = cols * rows
    return n + 1 if n > 1 else n


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an RGB image, raising ``ImageError`` naming the path on failure."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
