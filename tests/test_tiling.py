"""Image tiling: the processor the project feeds InternVL with tiles as InternVL's own rule says.

``find_grid`` below is the reference rule (InternVL's ``dynamic_preprocess``: the grid with the
closest aspect ratio, ties to the larger grid when the image covers more than half of its area);
transformers agrees with it everywhere in the sweeps below (min_tiles 1..max_tiles included).

Known difference from InternVL's *original* code, not from transformers: inside one ``i*j``
InternVL iterates a Python ``set`` (CPython hash order, e.g. (4,1) before (1,4) before (2,2))
while we and transformers go by increasing cols. This only matters when ``min_tiles > 1``
and the image ratio is an exact midpoint, e.g. 40x16 with min=max=4: InternVL's code keeps
(4,1), we and transformers keep (2,2). The project always uses min_tiles=1, where the order
provably cannot matter (see the note above ``find_grid``).
"""

import itertools

import pytest
import torch
from PIL import Image
from transformers.models.got_ocr2.image_processing_got_ocr2 import (
    GotOcr2ImageProcessor,
    get_optimal_tiled_canvas,
)

from dreamprm.batching import ExampleBuilder


# The oracle: InternVL's tiling rule written out. Among grids (cols i, rows j) with
# min_tiles <= i*j <= max_tiles, visited in increasing i*j (then increasing i), keep the one whose
# ratio i/j is closest to width/height; on an exact tie a later grid replaces the kept one only
# when the image area exceeds half the grid's area (0.5 * tile_size**2 * i * j). A thumbnail
# is added when there is more than one tile. Inside one i*j the order cannot matter when
# min_tiles == 1: between two such grids (a, b) and (c, d) (a < c) lies (a, d), strictly closer
# to their midpoint.
def find_grid(
    width: int, height: int, max_tiles: int, min_tiles: int = 1, tile_size: int = 448
) -> tuple[int, int]:
    """Return the tiling grid ``(cols, rows)`` for a ``width`` x ``height`` image."""
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


# (width, height, max_tiles, min_tiles) -> (cols, rows), worked out by hand from the rule.
HAND = [
    # ratio 1: (1,1) exact; later exact ties (2,2)/(3,3) need area > 0.5*448²*4 = 401,408.
    ((448, 448, 6, 1), (1, 1)),
    ((448, 448, 12, 1), (1, 1)),
    # area 1,000,000 > 401,408 so (2,2) takes the tie, and > 0.5*448²*9 = 903,168 so (3,3) too.
    ((1000, 1000, 4, 1), (2, 2)),
    ((1000, 1000, 12, 1), (3, 3)),
    # ratio 2: (2,1) exact; at 12, (4,2) ties but 500,000 <= 0.5*448²*8 = 802,816.
    ((1000, 500, 6, 1), (2, 1)),
    ((1000, 500, 12, 1), (2, 1)),
    # exact-tie pair: 896x448 keeps (2,1); 1792x896 (area 1,605,632 > 802,816) moves to (4,2).
    ((896, 448, 12, 1), (2, 1)),
    ((1792, 896, 12, 1), (4, 2)),
    ((1792, 896, 6, 1), (2, 1)),
    # ratio 0.025: the thinnest allowed grid is closest.
    ((100, 4000, 12, 1), (1, 12)),
    ((4000, 100, 4, 1), (4, 1)),
    ((4000, 100, 1, 1), (1, 1)),
    ((10, 10, 12, 1), (1, 1)),
    # ratio 4/3: (3,2) (diff 1/6) at 6; (4,3) is exact at 12.
    ((800, 600, 6, 1), (3, 2)),
    ((800, 600, 12, 1), (4, 3)),
    # min_tiles=2: ratio 1.25 is equidistant (0.75) from (1,2) and (2,1); the later (2,1)
    # wins only when area > 0.5*448²*2 = 200,704.
    ((500, 400, 2, 2), (1, 2)),
    ((1000, 800, 2, 2), (2, 1)),
    # min=max=4: ratio 2.5 is 1.5 from both (2,2) and (4,1); 640 <= 0.5*448²*4 keeps (2,2).
    ((40, 16, 4, 4), (2, 2)),
]


@pytest.mark.parametrize("args,grid", HAND, ids=[f"{a[0]}x{a[1]}@{a[3]}-{a[2]}" for a, _ in HAND])
def test_find_grid_by_hand(args, grid):
    w, h, mx, mn = args
    assert find_grid(w, h, mx, min_tiles=mn) == grid


def test_count_tiles_adds_thumbnail_only_for_several_tiles():
    assert count_tiles(448, 448, 12) == 1
    assert count_tiles(1000, 500, 6) == 3
    assert count_tiles(100, 4000, 12) == 13
    assert count_tiles(800, 600, 6) == 7
    assert count_tiles(4000, 100, 1) == 1


SIDES = [1, 10, 28, 100, 224, 300, 447, 448, 449, 500, 640, 896, 1000, 1344, 1792, 4000]
SWEEP = sorted(set(itertools.product(SIDES, SIDES)) | {(896, 448), (1792, 896), (4000, 100),
                                                       (100, 4000), (1344, 448), (2688, 896)})


@pytest.mark.parametrize("max_tiles", [1, 4, 6, 12])
@pytest.mark.parametrize("tile", [448, 28])
def test_grid_matches_transformers(max_tiles, tile):
    mismatches = []
    for w, h in SWEEP:
        for min_tiles in range(1, max_tiles + 1):
            ours = find_grid(w, h, max_tiles, min_tiles=min_tiles, tile_size=tile)
            # transformers takes (height, width) and returns (cols, rows).
            theirs = get_optimal_tiled_canvas((h, w), (tile, tile), min_tiles, max_tiles)
            if ours != tuple(theirs):
                mismatches.append((w, h, min_tiles, ours, theirs))
    assert mismatches == []


@pytest.mark.parametrize("max_tiles", [1, 4, 6, 12])
def test_number_of_patches_matches_transformers(max_tiles):
    proc = GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1, max_patches=max_tiles,
                                 size={"height": 448, "width": 448})
    for w, h in SWEEP:
        assert proc.get_number_of_image_patches(h, w, {}) == count_tiles(w, h, max_tiles)


@pytest.mark.parametrize("max_tiles,tile", [(1, 448), (4, 448), (6, 448), (12, 448), (12, 28)])
def test_real_processor_tiles_like_count_tiles(max_tiles, tile):
    sizes = [(448, 448), (1000, 500), (100, 4000), (4000, 100), (10, 10), (1792, 896), (800, 600)]
    images = [Image.new("RGB", s, (40 * k, 200 - 20 * k, 90)) for k, s in enumerate(sizes)]
    proc = GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1, max_patches=max_tiles,
                                 size={"height": tile, "width": tile})
    out = proc(images=images, return_tensors="pt")
    expected = [count_tiles(w, h, max_tiles, tile_size=tile) for w, h in sizes]
    assert out["num_patches"].tolist() == expected
    assert tuple(out["pixel_values"].shape) == (sum(expected), 3, tile, tile)


def test_real_processor_cuts_row_major_with_thumbnail_last():
    # 2x2 quadrants of distinct colours -> grid (2,2): tiles TL, TR, BL, BR, then thumbnail.
    img = Image.new("RGB", (112, 112))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for k, c in enumerate(colours):
        x, y = (k % 2) * 56, (k // 2) * 56
        img.paste(c, (x, y, x + 56, y + 56))
    assert find_grid(112, 112, 4, tile_size=28) == (2, 2)
    proc = GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1, max_patches=4,
                                 size={"height": 28, "width": 28}, do_normalize=False)
    pix = proc(images=[img], return_tensors="pt")["pixel_values"]
    assert pix.shape == (5, 3, 28, 28)
    for k, c in enumerate(colours):
        centre = pix[k, :, 10:18, 10:18].mean(dim=(1, 2))
        assert torch.allclose(centre, torch.tensor(c, dtype=torch.float32) / 255, atol=0.02)
    # The thumbnail shows all four colours, one per quadrant.
    thumb = pix[4]
    assert torch.allclose(thumb[:, 3, 3], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(thumb[:, 24, 24], torch.tensor([1.0, 1.0, 0.0]), atol=0.02)


@pytest.mark.parametrize("max_tiles", [1, 6, 12])
def test_image_token_count_is_tiles_times_tokens_per_tile(tiny_prm, max_tiles):
    """What drop_overlong and the scorer count without decoding pixels: the image tokens a record
    of this size gets, tiles by InternVL's rule times the model's tokens per tile."""
    builder = ExampleBuilder(tiny_prm.processor, max_tiles)
    tile = tiny_prm.processor.image_processor.size["height"]
    for w, h in [(tile, tile), (1000, 500), (100, 4000), (1792, 896), (800, 600), (5 * tile, 2 * tile)]:
        want = count_tiles(w, h, max_tiles, tile_size=tile) * tiny_prm.tokens_per_tile
        assert builder.image_tokens(w, h) == want
