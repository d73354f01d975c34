"""Reading a vision tower folder's config: the one file read the image layout needs.

Kept out of `llava.anyres`, which is pure size maths.
"""

from __future__ import annotations

import json
from pathlib import Path


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
