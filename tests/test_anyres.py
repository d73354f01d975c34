"""llava.anyres: literal values, and agreement with transformers' own LlavaNext helpers."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import unpad_image

from llava.anyres import (
    ImageLayout,
    default_grid_pinpoints,
    normalize_aspect_ratio,
    parse_grid_pinpoints,
    resize_for_tiles,
    select_best_resolution,
    tile_grid_shape,
    to_pinpoint_tuple,
    unpad_bounds,
)

S336 = to_pinpoint_tuple(default_grid_pinpoints(336))
SWEEP_HW = [(h, w) for h, w in itertools.product([1, 9, 55, 56, 57, 111, 335, 336, 337, 480, 673, 1009, 2000, 3024], repeat=2)]


def test_parse_grid_pinpoints_forms():
    assert parse_grid_pinpoints(None, 336) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert parse_grid_pinpoints("", 56) == [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    assert parse_grid_pinpoints([(56, 112), [112, 56]], 56) == [[56, 112], [112, 56]]
    assert parse_grid_pinpoints("[[336, 672], [672, 336]]", 336) == [[336, 672], [672, 336]]
    grid = parse_grid_pinpoints("(1x1),...,(3x3)", 336)
    assert len(grid) == 9
    assert grid[0] == [336, 336] and grid[1] == [336, 672] and grid[3] == [672, 336] and grid[-1] == [1008, 1008]
    assert parse_grid_pinpoints("(1x1),...,(2x2)", 56) == [[56, 56], [56, 112], [112, 56], [112, 112]]


@pytest.mark.parametrize("bad", ["[[336, 500]]", "not a list", "[]", [[0, 336]], "[[336, 672]", [[-336, 336]]])
def test_parse_grid_pinpoints_rejects(bad):
    with pytest.raises(ValueError):
        parse_grid_pinpoints(bad, 336)


def test_select_best_resolution_matches_transformers():
    grids = [S336, to_pinpoint_tuple(parse_grid_pinpoints("(1x1),...,(3x3)", 56))]
    for grid, hw in itertools.product(grids, SWEEP_HW):
        assert select_best_resolution(hw, grid) == tuple(hf_select_best_resolution(hw, [list(p) for p in grid])), hw


def test_select_best_resolution_literals():
    assert select_best_resolution((480, 640), S336) == (672, 672)
    assert select_best_resolution((1, 1), S336) == (336, 672)  # ties keep the first pinpoint
    assert select_best_resolution((9, 2000), S336) == (336, 1008)
    assert select_best_resolution((2000, 9), S336) == (1008, 336)
    assert tile_grid_shape((480, 640), S336, 336) == (2, 2)
    assert tile_grid_shape((9, 2000), S336, 336) == (1, 3)


def test_resize_for_tiles_matches_transformers():
    for hw, target in itertools.product(SWEEP_HW, [(336, 672), (672, 336), (1008, 1008), (56, 168)]):
        image = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, *hw))  # only the shape is read
        assert resize_for_tiles(hw, target) == get_patch_output_size(image, target, ChannelDimension.FIRST), (hw, target)
    assert resize_for_tiles((480, 640), (672, 672)) == (504, 672)
    assert resize_for_tiles((9, 2000), (336, 1008)) == (5, 1008)


def test_unpad_bounds_matches_transformers_unpad_image():
    for hw, feat in itertools.product(SWEEP_HW, [(48, 48), (24, 72), (72, 24), (8, 8), (4, 12)]):
        feature = torch.arange(feat[0] * feat[1], dtype=torch.float32).view(1, *feat)
        top, height, left, width = unpad_bounds(hw, feat)
        torch.testing.assert_close(feature[:, top : top + height, left : left + width], unpad_image(feature, hw))
    assert unpad_bounds((480, 640), (48, 48)) == (6, 36, 0, 48)
    assert unpad_bounds((640, 480), (48, 48)) == (0, 48, 6, 36)
    assert unpad_bounds((2000, 9), (72, 24)) == (0, 72, 12, 0)  # a 9-px-wide image keeps no column


NEXT = dict(aspect_ratio="anyres", merge_type="spatial_unpad")  # LLaVA-NeXT's layout


def layout(**kwargs):
    return ImageLayout(tile_size=336, patch_size=14, grid_pinpoints=S336, **{**NEXT, **kwargs})


def test_num_tokens_literals_spatial_unpad():
    lay = layout()
    assert lay.tokens_per_tile == 576 and lay.patches_per_side == 24 and lay.uses_newline
    assert lay.num_tokens((480, 640)) == 2340  # 576 + 36 rows x (48 + 1)
    assert lay.num_tokens((3024, 4032)) == 2340
    assert lay.num_tokens((1500, 2250)) == 2144
    assert lay.num_tokens((1, 1)) == 1176  # 576 + 24 x (24 + 1): the 1x1 image fills the 1x2 grid's square
    assert lay.num_tokens((2000, 9)) == 648  # 576 + 72 newlines, no image column
    assert [lay.num_tiles(hw) for hw in [(480, 640), (1, 1), (9, 2000)]] == [5, 3, 4]


def test_num_tokens_other_layouts():
    assert layout(merge_type="spatial").num_tokens((480, 640)) == 576 * 5
    assert layout(merge_type="flat").num_tokens((9, 2000)) == 576 * 4
    assert not layout(merge_type="flat").uses_newline
    assert layout(merge_type="flat", select_feature="cls_patch").num_tokens((480, 640)) == 577 * 5
    assert layout(aspect_ratio="pad").num_tokens((480, 640)) == 577  # one tile + image_newline
    assert layout(aspect_ratio="square", merge_type="flat").num_tokens((480, 640)) == 576
    assert layout(aspect_ratio="pad", merge_type="flat", select_feature="cls_patch").num_tokens((480, 640)) == 577
    assert layout(aspect_ratio="square").num_tiles((480, 640)) == 1
    assert layout(aspect_ratio="pad").grid_shape((480, 640)) == (0, 0)
    tiny = ImageLayout(tile_size=56, patch_size=14, grid_pinpoints=to_pinpoint_tuple(default_grid_pinpoints(56)), **NEXT)
    assert tiny.num_tokens((480, 640)) == 70  # 16 + 6 rows x (8 + 1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(aspect_ratio="wide"), dict(merge_type="unpad"), dict(select_feature="cls"), dict(merge_type="spatial_unpad", select_feature="cls_patch")],
)
def test_layout_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        layout(**kwargs)
    with pytest.raises(ValueError, match="multiple of patch size"):
        ImageLayout(tile_size=50, patch_size=14, grid_pinpoints=S336)


def test_normalize_aspect_ratio_spellings():
    assert [normalize_aspect_ratio(v) for v in (None, "", "square", "resize", "anyres", "anyres_max_9", "pad")] == [
        "square", "square", "square", "square", "anyres", "anyres", "pad",
    ]


def test_layout_from_args_and_config_share_llava_defaults():
    vision = {"image_size": 56, "patch_size": 14}
    absent = ImageLayout.from_config(SimpleNamespace(mm_vision_config=vision))  # e.g. a LLaVA-1.5 config
    assert (absent.aspect_ratio, absent.merge_type, absent.select_feature) == ("square", "flat", "patch")
    assert absent == ImageLayout.from_args(vision, None, None, None, None) == ImageLayout(
        56, 14, to_pinpoint_tuple(default_grid_pinpoints(56)))
    given = ImageLayout.from_args(vision, "anyres_max_9", "(1x1),...,(2x2)", "spatial_unpad", "patch")
    assert given == ImageLayout(56, 14, ((56, 56), (56, 112), (112, 56), (112, 112)), "anyres", "spatial_unpad")
    config = SimpleNamespace(mm_vision_config=vision, image_aspect_ratio="anyres_max_9",
                             image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
                             mm_patch_merge_type="spatial_unpad", mm_vision_select_feature="patch")
    assert ImageLayout.from_config(config) == given
