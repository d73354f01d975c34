"""`llava.mm_utils`' LLaVA helpers against LLaVA-NeXT's own (its mm_utils.py, vendored verbatim).

Pinpoints: LLaVA-NeXT reads each pair as [width, height], we read
[height, width]; it is given the transposed list, so both describe the same grids.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava import mm_utils

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream" / "llava_next" / "mm_utils.py"


@pytest.fixture(scope="module")
def theirs():
    spec = importlib.util.spec_from_file_location("upstream_llava_next_mm_utils", UPSTREAM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def picture(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


SIZES = [(90, 40), (40, 90), (300, 200), (56, 56), (17, 300)]


@pytest.mark.parametrize("size", SIZES)
def test_resize_and_pad_and_divide(theirs, size):
    image = picture(*size)
    for target in [(112, 56), (56, 168), (112, 112)]:
        mine = mm_utils.resize_and_pad_image(image, target)
        assert np.array_equal(np.asarray(mine), np.asarray(theirs.resize_and_pad_image(image, target)))
        ours_tiles = mm_utils.divide_to_patches(mine, 56)
        their_tiles = theirs.divide_to_patches(mine, 56)
        assert [np.asarray(t).tolist() for t in ours_tiles] == [np.asarray(t).tolist() for t in their_tiles]


@pytest.mark.parametrize("size", SIZES)
def test_grid_shape(theirs, size):
    ours_hw = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168], [56, 224]]  # asymmetric on purpose
    their_wh = [[w, h] for h, w in ours_hw]
    assert mm_utils.get_anyres_image_grid_shape(size, ours_hw, 56) == theirs.get_anyres_image_grid_shape(
        size, their_wh, 56)


@pytest.mark.parametrize("size", SIZES)
def test_process_highres_image(theirs, size):
    processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    image = picture(*size)
    mine = mm_utils.process_highres_image(image, processor, "56,112,130")
    expected = theirs.process_highres_image(image, processor, "56,112,130")
    assert mine.shape == expected.shape == (1 + 4, 3, 56, 56)
    assert torch.equal(mine, expected)
