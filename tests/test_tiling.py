"""Tile planning and blending for --fit tile (percept_cli.tiling)."""

import numpy as np
import pytest

from percept_cli.tiling import feather, merge_depth_tiles, plan_tiles


@pytest.mark.parametrize("h,w,tiles", [(300, 400, 2), (3000, 4000, 3), (64, 64, 1), (50, 500, 2)])
def test_tiles_cover_the_image_with_overlap(h, w, tiles):
    boxes = plan_tiles(h, w, tiles, overlap=0.25)
    cover = np.zeros((h, w), int)
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w and y1 - y0 == x1 - x0  # square, inside
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    if tiles > 1:
        side = boxes[0][1] - boxes[0][0]
        assert abs(side - min(h, w) / (tiles - (tiles - 1) * 0.25)) <= 1
        assert len({b[0] for b in boxes}) == tiles  # `tiles` rows across the short side (h here)


def test_feather_is_one_inside_and_small_at_edges():
    f = feather(40, 40)
    assert f[20, 20] == 1.0 and f[0, 0] < 0.01 and f[0, 20] < 0.1


def test_merge_recovers_detail_from_rescaled_tiles():
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    truth = (xx / (w - 1) * 0.8 + 0.1 * ((yy // 8) % 2)).astype(np.float32)  # a ramp with fine stripes
    layout = np.broadcast_to(truth.mean(axis=0, keepdims=True), (h, w))  # coarse: only the ramp, no stripes
    rng = np.random.default_rng(0)
    tiles = []
    for y0, y1, x0, x1 in plan_tiles(h, w, 2):
        crop = truth[y0:y1, x0:x1]
        tiles.append(((y0, y1, x0, x1), rng.uniform(0.5, 2.0) * crop + rng.uniform(-1, 1)))  # each in its own units
    target = (truth - truth.min()) / (truth.max() - truth.min())
    layout01 = (layout - layout.min()) / np.ptp(layout)
    assert np.abs(layout01 - target).mean() > 0.04
    for resolution in (None, 8, 16):  # the plain blend, and the layout's coarse part + the crops' detail
        merged = merge_depth_tiles(layout.astype(np.float32), tiles, resolution)
        # stripes back (each crop fitted to the stripeless layout: its scale a little off), no crop's own units
        assert np.abs(merged - target).mean() < 0.02, resolution


def test_merge_keeps_the_layout_coarse_and_the_crops_fine():
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    coarse = xx / (w - 1)  # the layout: right
    fine = 0.05 * ((xx // 4) % 2)  # detail only the crops resolve
    tiles = [((y0, y1, x0, x1), (coarse + fine)[y0:y1, x0:x1] + 0.3 * (x0 / w) ** 2 * (xx[y0:y1, x0:x1] / w))
             for y0, y1, x0, x1 in plan_tiles(h, w, 2)]  # crops whose coarse shape is off (a zoomed-in view)
    merged = merge_depth_tiles(coarse.astype(np.float32), tiles, resolution=32)
    want = coarse + fine
    want = (want - want.min()) / np.ptp(want)
    plain = merge_depth_tiles(coarse.astype(np.float32), tiles)
    assert np.abs(merged - want).mean() < np.abs(plain - want).mean()
    stripes = np.abs(np.diff(merged[60, 40:120])).mean()
    assert stripes > 0.5 * np.abs(np.diff(want[60, 40:120])).mean()  # the fine detail is there


def test_merge_checks_tile_shapes():
    with pytest.raises(ValueError, match="expected"):
        merge_depth_tiles(np.zeros((8, 8), np.float32), [((0, 4, 0, 4), np.zeros((3, 4)))])
