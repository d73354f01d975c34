"""Anyres maths: small pure functions on sizes, in one place.

Image processing (`llava.mm_utils`), the model's splice (`llava.model`), the
dataset's length counter and the preflight check all call these, so the number
of tiles, the feature grid and the number of image tokens can never disagree.

Conventions (the same as transformers' LlavaNext):
- every size is `(height, width)`;
- grid pinpoints are `[height, width]` pairs in pixels;
- a *tile* is one `tile_size` x `tile_size` crop fed to the vision tower;
- a *patch* is the ViT's `patch_size` square, one feature vector per patch.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

ASPECT_RATIOS = ("anyres", "pad", "square")
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
SELECT_FEATURES = ("patch", "cls_patch")

# LLaVA's defaults when a flag or a config key is absent (one image squashed, features flat). The training
# arguments, the preflight check and model configs without these keys all take them from here.
DEFAULT_ASPECT_RATIO = "square"
DEFAULT_MERGE_TYPE = "flat"
DEFAULT_SELECT_FEATURE = "patch"


def default_grid_pinpoints(tile_size: int) -> list[list[int]]:
    """LLaVA-NeXT's five grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles) for a tile size."""
    s = tile_size
    return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]


def parse_grid_pinpoints(value, tile_size: int) -> list[list[int]]:
    """Turn `--image_grid_pinpoints` into a list of `[height, width]` pixel pairs.

    Accepts None/"" (the default grid), a list of pairs, a list literal string
    such as "[[336, 672], [672, 336]]", or LLaVA-NeXT's range form
    "(1x1),...,(3x3)", which means every grid from the first to the last
    (in tiles, rows x columns) and is multiplied by the tile size.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default_grid_pinpoints(tile_size)
    if isinstance(value, str):
        text = value.strip()
        ranges = re.findall(r"\((\d+)\s*x\s*(\d+)\)", text)
        if ranges:
            (r0, c0), (r1, c1) = (map(int, ranges[0]), map(int, ranges[-1]))
            value = [[r * tile_size, c * tile_size] for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"cannot parse image_grid_pinpoints {value!r}: {err}") from None
    pinpoints = [[int(h), int(w)] for h, w in value]
    for h, w in pinpoints:
        if h <= 0 or w <= 0 or h % tile_size or w % tile_size:
            raise ValueError(f"grid pinpoint {[h, w]} is not a positive multiple of the tile size {tile_size}")
    if not pinpoints:
        raise ValueError("image_grid_pinpoints is empty")
    return pinpoints


def select_best_resolution(image_hw, pinpoints) -> tuple[int, int]:
    """The pinpoint that keeps the most image pixels, then wastes the fewest.

    Same rule and tie-breaking as transformers' `select_best_resolution`.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    best, best_effective, best_wasted = None, 0, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(cand_h), int(cand_w)), effective, wasted
    return best


def resize_for_tiles(image_hw, target_hw) -> tuple[int, int]:
    """Size to resize an image to so it fits `target_hw` keeping its aspect ratio.

    The longer relative side fills the target; the other is rounded up, as in
    transformers' `get_patch_output_size`. The rest is padded.
    """
    height, width = image_hw
    target_h, target_w = target_hw
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def tile_grid_shape(image_hw, pinpoints, tile_size: int) -> tuple[int, int]:
    """(rows, columns) of tiles the image is cut into, besides the base tile."""
    best_h, best_w = select_best_resolution(image_hw, pinpoints)
    return best_h // tile_size, best_w // tile_size


def unpad_bounds(image_hw, feature_hw) -> tuple[int, int, int, int]:
    """(top, height, left, width) of the feature map rows/cols that hold image, not padding.

    `feature_hw` is the size of the stitched tile feature grid (in patches).
    Rounding follows transformers' `unpad_image` (round to 7 digits, then int).
    """
    height, width = image_hw
    feat_h, feat_w = feature_hw
    if width / height > feat_w / feat_h:
        new_h = int(round(height * (feat_w / width), 7))
        pad = (feat_h - new_h) // 2
        return pad, feat_h - 2 * pad, 0, feat_w
    new_w = int(round(width * (feat_h / height), 7))
    pad = (feat_w - new_w) // 2
    return 0, feat_h, pad, feat_w - 2 * pad


@dataclass(frozen=True)
class ImageLayout:
    """How one image becomes tiles and then tokens, for one model configuration."""

    tile_size: int
    """Side in pixels of a tile, the vision tower's input size (336 for CLIP-L/336)."""
    patch_size: int
    """Side in pixels of the ViT's patch (14); `tile_size // patch_size` patches per tile side."""
    grid_pinpoints: tuple[tuple[int, int], ...]
    """Allowed anyres canvases as `(height, width)` pixel pairs, multiples of `tile_size`."""
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    """LLaVA's `image_aspect_ratio`: `anyres` tiles; `pad` pads to square; `square` squashes."""
    merge_type: str = DEFAULT_MERGE_TYPE
    """LLaVA's `mm_patch_merge_type`: `spatial_unpad` (grid, unpadded, newline per row), `spatial`, `flat`."""
    select_feature: str = DEFAULT_SELECT_FEATURE
    """LLaVA's `mm_vision_select_feature`: `patch` drops CLS, `cls_patch` keeps it (CLIP only)."""

    def __post_init__(self):
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {self.aspect_ratio!r}")
        if self.merge_type not in MERGE_TYPES:
            raise ValueError(f"mm_patch_merge_type must be one of {MERGE_TYPES}, got {self.merge_type!r}")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"mm_vision_select_feature must be one of {SELECT_FEATURES}, got {self.select_feature!r}")
        if self.tile_size % self.patch_size:
            raise ValueError(f"tile size {self.tile_size} is not a multiple of patch size {self.patch_size}")
        if self.select_feature == "cls_patch" and self.is_anyres and self.merge_type != "flat":
            raise ValueError("mm_vision_select_feature='cls_patch' with anyres needs mm_patch_merge_type='flat'")

    @property
    def is_anyres(self) -> bool:
        return self.aspect_ratio == "anyres"

    @property
    def patches_per_side(self) -> int:
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_side**2 + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def uses_newline(self) -> bool:
        """True when the model appends the learned `image_newline` (LLaVA: 'unpad' merge types)."""
        return "unpad" in self.merge_type

    def grid_shape(self, image_hw) -> tuple[int, int]:
        """(rows, columns) of tiles after the base tile; (0, 0) when not anyres."""
        if not self.is_anyres:
            return 0, 0
        return tile_grid_shape(image_hw, self.grid_pinpoints, self.tile_size)

    def num_tiles(self, image_hw) -> int:
        """Tiles fed to the vision tower for one image, base tile included."""
        rows, cols = self.grid_shape(image_hw)
        return rows * cols + 1

    def num_tokens(self, image_hw) -> int:
        """Embeddings one image of size `image_hw` puts into the LLM sequence."""
        per_tile = self.tokens_per_tile
        if not self.is_anyres:
            return per_tile + (1 if self.uses_newline else 0)
        rows, cols = self.grid_shape(image_hw)
        if self.merge_type == "flat":
            return per_tile * (rows * cols + 1)
        n = self.patches_per_side
        if self.uses_newline:
            _, h, _, w = unpad_bounds(image_hw, (rows * n, cols * n))
            return per_tile + h * (w + 1)
        return per_tile + rows * cols * n * n

    @classmethod
    def from_args(cls, vision: dict, aspect_ratio, grid_pinpoints, merge_type, select_feature) -> "ImageLayout":
        """The layout for a vision config dict (`image_size`, `patch_size`) and LLaVA's four layout settings.

        The one derivation every caller uses: training (`--image_aspect_ratio`,
        `--image_grid_pinpoints`, `--mm_patch_merge_type`, `--mm_vision_select_feature`),
        the preflight check (same flags) and model configs (same names). None
        means LLaVA's default (`DEFAULT_*`); aspect ratios are normalised and
        pinpoints parsed for the tower's tile size.
        """
        tile = int(vision["image_size"])
        return cls(
            tile_size=tile,
            patch_size=int(vision["patch_size"]),
            grid_pinpoints=to_pinpoint_tuple(parse_grid_pinpoints(grid_pinpoints, tile)),
            aspect_ratio=normalize_aspect_ratio(aspect_ratio),
            merge_type=merge_type or DEFAULT_MERGE_TYPE,
            select_feature=select_feature or DEFAULT_SELECT_FEATURE,
        )

    @classmethod
    def from_config(cls, config) -> "ImageLayout":
        """Layout of a LLaVA model config (ours stores the tower geometry in `mm_vision_config`).

        Keys a config lacks (LLaVA-1.5 configs predate `mm_patch_merge_type`)
        mean LLaVA's defaults, as in LLaVA's own code.
        """
        names = ("image_aspect_ratio", "image_grid_pinpoints", "mm_patch_merge_type", "mm_vision_select_feature")
        return cls.from_args(config.mm_vision_config, *(getattr(config, name, None) for name in names))


def to_pinpoint_tuple(pinpoints) -> tuple[tuple[int, int], ...]:
    return tuple((int(h), int(w)) for h, w in pinpoints)


def normalize_aspect_ratio(value) -> str:
    """Map LLaVA's spellings onto ours: None/'square'/'resize' -> square, 'anyres*' -> anyres."""
    if value in (None, ""):
        return DEFAULT_ASPECT_RATIO
    if value in ("square", "resize"):
        return "square"
    if str(value).startswith("anyres"):
        return "anyres"
    return str(value)
