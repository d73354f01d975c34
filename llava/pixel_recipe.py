"""The per-tile pixel arithmetic of transformers' `LlavaNextImageProcessorPil`, done faster.

`TileRecipe` reads a CLIP/SigLIP image processor (size, crop, resample,
rescale, mean, std) and applies exactly what transformers applies to each
tile: resize to `size`, centre crop, rescale and normalise. The values are
bit-identical to transformers' (checked on all 256 levels at construction),
but computed on whole stacks of tiles at once. `llava.mm_utils` cuts the tiles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def _field(size, key):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


class TileRecipe:
    """What `LlavaNextImageProcessorPil` does to each tile, read from a CLIP/SigLIP processor.

    transformers 5 processors carry every attribute read here (None when unset).
    """

    def __init__(self, processor):
        size, crop = processor.size, processor.crop_size
        self.short = _field(size, "shortest_edge")
        self.size_hw = (_field(size, "height"), _field(size, "width"))
        if not self.short and not all(self.size_hw):
            raise ValueError(f"image processor size {size} has neither shortest_edge nor height/width")
        # Base tile size and tile side, as LlavaNextImageProcessor derives them.
        self.base_hw = self.size_hw if all(self.size_hw) else (self.short, self.short)
        self.tile = _field(crop, "height") or self.size_hw[0] or self.short
        self.do_resize = bool(processor.do_resize)
        self.crop_hw = (_field(crop, "height"), _field(crop, "width"))
        self.do_crop = bool(processor.do_center_crop) and all(self.crop_hw)
        self.resample = Image.Resampling.BILINEAR if processor.resample is None else _pil_resample(processor.resample)
        self.processor = processor
        self.lut = self._value_table()  # (3, 256) float32
        self.divisor, self.mean, self.std = self._arithmetic()

    def resize_target(self, hw):
        """Size the per-tile `resize(size)` step produces for a tile of size `hw`."""
        if not self.short:
            return self.size_hw
        h, w = hw
        new_long = int(self.short * max(h, w) / min(h, w))
        return (new_long, self.short) if w <= h else (self.short, new_long)

    def finish(self, tiles: np.ndarray) -> torch.Tensor:
        """Per-tile resize and centre crop, then normalise: (n, h, w, 3) uint8 -> (n, 3, h', w') float32."""
        if self.do_resize and self.resize_target(tiles.shape[1:3]) != tiles.shape[1:3]:
            target_hw = self.resize_target(tiles.shape[1:3])
            tiles = np.stack([_pil_resize(t, target_hw, self.resample) for t in tiles])
        if self.do_crop and tiles.shape[1:3] != self.crop_hw:
            tiles = _center_crop(tiles, self.crop_hw)
        src = torch.from_numpy(np.ascontiguousarray(tiles))
        out = torch.empty((src.shape[0], 3, src.shape[1], src.shape[2]), dtype=torch.float32)
        return self.normalize(src, out)

    def is_final(self, hw) -> bool:
        """True when resize(size) and centre crop leave a tile of size `hw` unchanged."""
        hw = tuple(hw)
        resized = self.resize_target(hw) if self.do_resize else hw
        return resized == hw and (not self.do_crop or hw == self.crop_hw)

    def normalize(self, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Rescale and normalise uint8 `src` (..., h, w, 3) into float32 `out` (..., 3, h, w)."""
        out.copy_(src.movedim(-1, -3))  # (..., 3, h, w)
        if self.divisor is not None:
            return out.div_(self.divisor).sub_(self.mean).div_(self.std)
        index = out.to(torch.long)
        for c in range(3):
            out[..., c, :, :] = self.lut[c][index[..., c, :, :]]
        return out

    def _arithmetic(self):
        """(divisor, mean, std) float32 tensors when `((x / divisor) - mean) / std` equals the table.

        Checked on all 256 levels, so the fast path is bit-identical to
        transformers or not taken (then the table lookup is used).
        """
        factor = float(self.processor.rescale_factor)
        if not self.processor.do_rescale or factor <= 0:
            return None, None, None
        divisor = torch.tensor(round(1 / factor), dtype=torch.float32)
        mean, std = (torch.from_numpy(np.array(v)).view(3, 1, 1) for v in self._mean_std())
        levels = torch.arange(256, dtype=torch.float32).expand(3, 1, 256)
        if torch.equal((levels / divisor - mean) / std, self.lut.view(3, 1, 256)):
            return divisor, mean, std
        return None, None, None

    def _mean_std(self):
        if not self.processor.do_normalize:
            return np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32)
        mean = np.broadcast_to(np.asarray(self.processor.image_mean, dtype=np.float32), (3,))
        std = np.broadcast_to(np.asarray(self.processor.image_std, dtype=np.float32), (3,))
        return mean, std

    def _value_table(self) -> torch.Tensor:
        """Output value of each uint8 level per channel, computed the way transformers does.

        transformers rescales in float64, casts to float32 and normalises in
        float32; doing the same on the 256 levels gives the exact reference.
        """
        levels = np.arange(256, dtype=np.float64)[None].repeat(3, 0)  # (3, 256)
        if self.processor.do_rescale:
            levels = levels * self.processor.rescale_factor
        mean, std = self._mean_std()
        return torch.from_numpy((levels.astype(np.float32) - mean[:, None]) / std[:, None])


def _pil_resample(resample):
    if isinstance(resample, int):
        return Image.Resampling(int(resample))
    name = str(getattr(resample, "name", resample)).upper()
    if name in Image.Resampling.__members__:
        return Image.Resampling[name]
    raise ValueError(f"unsupported resample {resample!r} for PIL resizing")


def _pil_resize(array: np.ndarray, hw, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample=resample))


def _center_crop(tiles: np.ndarray, crop_hw) -> np.ndarray:
    """transformers' centre crop on (n, h, w, 3): zero-pad (rounding up on top/left) when too small."""
    n, h, w, _ = tiles.shape
    crop_h, crop_w = crop_hw
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return tiles[:, top : top + crop_h, left : left + crop_w]
    big_h, big_w = max(h, crop_h), max(w, crop_w)
    pad_top, pad_left = math.ceil((big_h - h) / 2), math.ceil((big_w - w) / 2)
    canvas = np.zeros((n, big_h, big_w, 3), dtype=tiles.dtype)
    canvas[:, pad_top : pad_top + h, pad_left : pad_left + w] = tiles
    top, left = top + pad_top, left + pad_left
    return canvas[:, max(0, top) : top + crop_h, max(0, left) : left + crop_w]
