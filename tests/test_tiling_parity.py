"""Acceptance 1 and 2 of issue 2: our anyres tiles and token counts equal transformers'.

The reference is `LlavaNextProcessor` around `LlavaNextImageProcessorPil`,
configured like the vision tower's processor; one call gives both its
`pixel_values` (tiles) and its `input_ids` (image tokens inserted).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor, SiglipImageProcessorPil

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.mm_utils import process_anyres_image
from llava.demo.tiny import load_vendored_tokenizer

MODES = ("RGB", "L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16")


def sweep_sizes(s):
    """(width, height) pairs: extremes, photos, and sizes one pixel around tile multiples."""
    sizes = [(1, 1), (2, 3), (7, 1), (1, 7), (2000, 9), (9, 2000), (1, 4000), (4000, 1)]
    sizes += [(640, 480), (480, 640), (1024, 768), (1280, 720), (720, 1280), (2250, 1500), (500, 1500)]
    sizes += [(4032, 3024), (3024, 4032), (4000, 3000)]
    for k in (1, 2, 3):
        sizes += [(k * s - 1, s), (k * s + 1, s), (s, k * s - 1), (s, k * s + 1)]
    sizes += [(2 * s - 1, 2 * s + 1), (2 * s + 1, 2 * s - 1), (3 * s + 1, s - 1), (s - 1, 3 * s + 1), (s, s)]
    sizes += [(2 * s, 2 * s), (3 * s, 3 * s), (s + 1, s + 1), (s // 2, 3 * s), (5 * s, 2 * s - 3)]
    return list(dict.fromkeys(sizes))


def make_image(width, height, mode, seed=0):
    """Photo-like content (gradients + shapes + noise) in the given PIL mode; alpha varies too.

    Drawn at most 512 px a side and resized up (cheap), then per-pixel noise is
    added at full size so every resample tap sees texture.
    """
    rng = np.random.default_rng(seed + width * 7919 + height)
    h0, w0 = min(height, 512), min(width, 512)
    y, x = np.mgrid[0:h0, 0:w0].astype(np.float32)
    fields = [x / w0, y / h0, ((x - w0 / 3) ** 2 + (y - h0 / 2) ** 2 < (min(w0, h0) / 4) ** 2), 1 - (x + y) / (w0 + h0)]
    small = (np.stack(fields, -1) * 200).astype(np.uint8)  # (h0, w0, 4)
    rgba = np.asarray(Image.fromarray(small, "RGBA").resize((width, height), Image.Resampling.BILINEAR))
    noise = rng.integers(0, 56, (min(height, 257), min(width, 263), 4), dtype=np.uint8)
    reps = (-(-height // noise.shape[0]), -(-width // noise.shape[1]), 1)
    rgba = rgba + np.tile(noise, reps)[:height, :width]  # (h, w, 4), stays <= 255
    if mode == "I;16":
        return Image.fromarray(rgba[..., 0].astype(np.uint16) * 97)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "RGBA":
        return image
    if mode == "LA":
        return image.convert("LA")
    if mode == "P+transparency":
        pal = image.convert("RGB").convert("P")
        pal.info["transparency"] = int(np.asarray(pal)[0, 0])
        return pal
    return image.convert("RGB").convert(mode)


def processors(family, s):
    """(our processor, the transformers reference) for a CLIP- or SigLIP-style tower of tile size s."""
    pinpoints = default_grid_pinpoints(s)
    if family == "clip":
        ours = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        extra = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    else:
        ours = SiglipImageProcessorPil(size={"height": s, "width": s})
        extra = dict(size={"height": s, "width": s}, crop_size={"height": s, "width": s}, do_center_crop=False)
    ref = LlavaNextImageProcessorPil(
        image_mean=ours.image_mean, image_std=ours.image_std, resample=ours.resample, image_grid_pinpoints=pinpoints, **extra
    )
    return ours, ref, pinpoints


@pytest.fixture(scope="module")
def image_tokenizer():
    tok = load_vendored_tokenizer("llama2")
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def check_one(image, family, s, tokenizer):
    ours, ref, pinpoints = processors(family, s)
    # CLIP drops CLS with "default" (it is the extra token); SigLIP has none and keeps all ("full").
    strategy, extra_tokens = ("default", 1) if family == "clip" else ("full", 0)
    hf = LlavaNextProcessor(
        image_processor=ref, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens,
    )
    out = hf(images=image, text="<image>", return_tensors="pt")
    expected = out["pixel_values"][0]
    got = process_anyres_image(image, ours, pinpoints)
    assert got.dtype == torch.float32 and got.shape == expected.shape, (image.size, image.mode, got.shape, expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    layout = ImageLayout(tile_size=s, patch_size=14, grid_pinpoints=to_pinpoint_tuple(pinpoints),
                         aspect_ratio="anyres", merge_type="spatial_unpad")
    image_hw = (image.height, image.width)
    assert layout.num_tiles(image_hw) == expected.shape[0]
    assert layout.num_tokens(image_hw) == int((out["input_ids"] == hf.image_token_id).sum())


SMALL = sweep_sizes(56)
LARGE = sweep_sizes(336)
# The default run samples the costly cases (a 12-Mpx image takes ~1 s through transformers);
# the slow tests run every size at both tile sizes.
HUGE = {(3024, 4032), (4000, 3000)}
LARGE_SAMPLE = [(1, 1), (2000, 9), (9, 2000), (640, 480), (335, 336), (673, 336), (336, 1009), (4032, 3024)]


def test_sweep_is_large_enough():
    assert len(SMALL) >= 40 and len(LARGE) >= 40
    assert {(1, 1), (2000, 9), (9, 2000), (4032, 3024)} <= set(SMALL) & set(LARGE)


def test_tiles_and_tokens_match_transformers_s56(image_tokenizer):
    for i, (w, h) in enumerate(size for size in SMALL if size not in HUGE):
        image = make_image(w, h, MODES[i % len(MODES)])
        for family in ("clip", "siglip"):
            check_one(image, family, 56, image_tokenizer)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_transformers(mode, image_tokenizer):
    for family in ("clip", "siglip"):
        for w, h in [(1, 1), (57, 111), (9, 200)]:
            check_one(make_image(w, h, mode), family, 56, image_tokenizer)
    check_one(make_image(673, 335, mode), "clip" if MODES.index(mode) % 2 else "siglip", 336, image_tokenizer)


@pytest.mark.parametrize("size", LARGE_SAMPLE)
def test_tiles_and_tokens_match_transformers_s336_sample(size, image_tokenizer):
    family = "clip" if sum(size) % 2 else "siglip"
    check_one(make_image(*size, "RGB"), family, 336, image_tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("tile", [56, 336])
def test_tiles_and_tokens_match_transformers_full_sweep(tile, image_tokenizer):
    for i, (w, h) in enumerate(SMALL if tile == 56 else LARGE):
        image = make_image(w, h, MODES[(i + tile) % len(MODES)])
        for family in ("clip", "siglip"):
            check_one(image, family, tile, image_tokenizer)


def test_generic_resize_and_crop_path_matches_transformers(image_tokenizer):
    """A processor whose resize size differs from its crop (tiles resized, then cropped)."""
    for short, crop in [(64, 56), (70, 56)]:
        ours = CLIPImageProcessorPil(size={"shortest_edge": short}, crop_size={"height": crop, "width": crop})
        ref = LlavaNextImageProcessorPil(
            size={"shortest_edge": short}, crop_size={"height": crop, "width": crop},
            image_grid_pinpoints=default_grid_pinpoints(crop),
        )
        for w, h in [(1, 1), (640, 480), (9, 200), (113, 57)]:
            image = make_image(w, h, "RGB")
            expected = torch.from_numpy(np.asarray(ref(image)["pixel_values"][0]))
            torch.testing.assert_close(process_anyres_image(image, ours, None), expected, atol=1e-4, rtol=0)


def test_unusual_rescale_factor_uses_exact_table():
    """A rescale factor that is not 1/255 takes the lookup-table path; still equal to transformers."""
    ours = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, rescale_factor=0.0041)
    ref = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, rescale_factor=0.0041,
        image_grid_pinpoints=default_grid_pinpoints(56),
    )
    image = make_image(640, 480, "RGB")
    expected = torch.from_numpy(np.asarray(ref(image)["pixel_values"][0]))
    torch.testing.assert_close(process_anyres_image(image, ours, None), expected, atol=1e-4, rtol=0)
