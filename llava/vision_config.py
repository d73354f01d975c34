"""Reading a vision tower folder's config: the one file read the image layout needs.

Kept out of `llava.anyres`, which is pure size maths; `layout_from_args` joins
the two for the command-line flags.
"""

from __future__ import annotations

import json
from pathlib import Path

from llava.anyres import ImageLayout


def read_vision_config(folder) -> dict:
    """The vision-model part of a CLIP/SigLIP folder's config.json, as a dict with `model_type`.

    Full CLIP/SigLIP configs nest it under `vision_config`; vision-only configs
    are the dict itself. Towers are chosen by this `model_type`, not by name.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"vision tower folder {folder} has no config.json")
    cfg = json.loads(path.read_text())
    family = str(cfg.get("model_type", ""))
    vision = dict(cfg.get("vision_config", cfg)) if "vision_config" in cfg else dict(cfg)
    base = family.replace("_vision_model", "")
    if base not in ("clip", "siglip"):
        raise ValueError(f"{folder}: unsupported vision tower model_type {family!r} (expected clip or siglip)")
    vision["model_type"] = f"{base}_vision_model"
    vision.setdefault("image_size", 224)
    vision.setdefault("patch_size", 32 if base == "clip" else 16)
    return vision


def layout_from_args(model_args, data_args) -> ImageLayout:
    """The image layout training uses: `model_args.vision_tower`'s geometry and the four layout flags.

    `model_args` needs LLaVA's `vision_tower`, `mm_patch_merge_type`,
    `mm_vision_select_feature`; `data_args` its `image_aspect_ratio`,
    `image_grid_pinpoints`. `train.py` passes its ModelArguments/DataArguments
    and the preflight check its parsed flags (same names, same defaults), so
    both measure the same layout.
    """
    return ImageLayout.from_args(
        read_vision_config(model_args.vision_tower),
        data_args.image_aspect_ratio,
        data_args.image_grid_pinpoints,
        model_args.mm_patch_merge_type,
        model_args.mm_vision_select_feature,
    )
