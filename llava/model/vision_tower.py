"""CLIP / SigLIP vision towers behind one wrapper, chosen by the folder's config.

LLaVA picks the tower class from the folder *name*; we read `model_type` from
its `config.json` (`llava.vision_config.read_vision_config`) so a renamed or local
copy of a tower still loads as the right family.

The wrapper keeps LLaVA's attribute names (`vision_tower`, `image_processor`,
`load_model`, `is_loaded`, `hidden_size`, `num_patches_per_side`) because
LLaVA's scripts and lmms-eval reach into them, and its state-dict keys
(`vision_tower.vision_model.*`) so checkpoints stay interchangeable.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from llava.vision_config import read_vision_config

_FAMILIES = ("clip", "siglip")


def _family(vision_config: dict) -> str:
    """'clip' or 'siglip' from a stored vision config's `model_type`."""
    family = str(vision_config.get("model_type", "")).replace("_vision_model", "")
    if family not in _FAMILIES:
        raise ValueError(f"unsupported vision tower model_type {vision_config.get('model_type')!r}; have {_FAMILIES}")
    return family


def _hf_classes(family: str):
    """(config class, model class) of transformers for a tower family."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    return (CLIPVisionConfig, CLIPVisionModel) if family == "clip" else (SiglipVisionConfig, SiglipVisionModel)


class VisionTower(nn.Module):
    """A frozen-by-default ViT that turns tiles into per-patch features.

    Built either from a folder (pretrained weights and image processor) or from
    a stored vision config dict (random weights, to be overwritten by a LLaVA
    checkpoint's `model.vision_tower.*` tensors).
    """

    def __init__(self, path_or_config, select_layer: int = -2, select_feature: str = "patch", delay_load: bool = False):
        super().__init__()
        if isinstance(path_or_config, dict):
            self.vision_tower_name = path_or_config.get("_name_or_path") or None
            self.vision_config = dict(path_or_config)
            self.folder = None
        else:
            self.folder = os.fspath(path_or_config)
            self.vision_tower_name = self.folder
            self.vision_config = read_vision_config(self.folder)
        self.family = _family(self.vision_config)
        self.select_layer = int(select_layer)
        self.select_feature = select_feature
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        if select_feature == "cls_patch" and self.family == "siglip":
            raise ValueError("mm_vision_select_feature='cls_patch' needs a CLS token, and SigLIP towers have none")
        self.image_processor = None
        self.is_loaded = False
        if not delay_load:
            self.load_model()

    def _hf_config(self):
        config_cls, _ = _hf_classes(self.family)
        fields = {k: v for k, v in self.vision_config.items() if k != "model_type"}
        return config_cls(**fields)

    def load_model(self, device_map=None):
        """Create the HF vision model: pretrained from the folder, else random from the stored config.

        Like LLaVA, a loaded tower starts frozen; `requires_grad_(True)` unfreezes it.
        """
        if self.is_loaded:
            return
        _, model_cls = _hf_classes(self.family)
        if self.folder is not None:
            from transformers import AutoImageProcessor

            self.vision_tower = model_cls.from_pretrained(self.folder, device_map=device_map)
            self.image_processor = AutoImageProcessor.from_pretrained(self.folder)
        else:
            self.vision_tower = model_cls(self._hf_config())
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def set_image_processor(self, processor_or_folder):
        """Attach the image processor (an object, or a folder to load it from), e.g. a checkpoint's."""
        if isinstance(processor_or_folder, (str, os.PathLike)):
            from transformers import AutoImageProcessor

            processor_or_folder = AutoImageProcessor.from_pretrained(processor_or_folder)
        self.image_processor = processor_or_folder

    def feature_select(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Drop CLIP's CLS for 'patch'; SigLIP has no CLS so 'patch' keeps every token."""
        if self.select_feature == "patch" and self.family == "clip":
            return hidden_states[:, 1:]
        return hidden_states

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles [N, 3, s, s] -> features [N, tokens_per_tile, C] from hidden_states[select_layer].

        Gradients flow only when some tower parameter is trainable, so a frozen
        tower costs no activation memory and an unfrozen one trains.
        """
        if isinstance(tiles, (list, tuple)):
            return [self.forward(t.unsqueeze(0) if t.ndim == 3 else t) for t in tiles]
        trainable = any(p.requires_grad for p in self.parameters())  # the tower, or its LoRA branches
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            out = self.vision_tower(
                tiles.to(device=self.device, dtype=self.dtype), output_hidden_states=True, return_dict=True
            )
        return self.feature_select(out.hidden_states[self.select_layer]).to(tiles.dtype)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype if self.is_loaded else torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device if self.is_loaded else torch.device("cpu")

    @property
    def config(self):
        """The HF vision config (of the loaded model, else built from the stored dict)."""
        return self.vision_tower.config if self.is_loaded else self._hf_config()

    @property
    def hidden_size(self) -> int:
        return int(self.vision_config["hidden_size"])

    @property
    def image_size(self) -> int:
        return int(self.vision_config["image_size"])

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // int(self.vision_config["patch_size"])

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2


CLIPVisionTower = VisionTower  # LLaVA's name, for callers that import it
SigLipVisionTower = VisionTower


def build_vision_tower(path_or_config, select_layer: int = -2, select_feature: str = "patch", delay_load: bool = False):
    """LLaVA's factory. `path_or_config`: a tower folder, a vision config dict, or a model config.

    A model config (anything with `mm_vision_tower`) is read the way LLaVA's
    `build_vision_tower(model_args)` reads it: its stored `mm_vision_config`
    wins over the folder so a checkpoint never needs the original tower.
    Without one (a config written by LLaVA's own code), the tower is built
    from the folder's *config* with random weights, never with
    `from_pretrained`: this runs inside the model's construction, which
    transformers does on the meta device, where loading weights raises. The
    checkpoint's tensors (or `reference.load_tower_from_folder`) fill it.
    """
    if isinstance(path_or_config, (dict, str, os.PathLike)):
        return VisionTower(path_or_config, select_layer=select_layer, select_feature=select_feature,
                           delay_load=delay_load)
    cfg = path_or_config
    select_layer = getattr(cfg, "mm_vision_select_layer", select_layer)
    select_feature = getattr(cfg, "mm_vision_select_feature", select_feature) or select_feature
    stored = getattr(cfg, "mm_vision_config", None)
    folder = getattr(cfg, "mm_vision_tower", None) or getattr(cfg, "vision_tower")
    if stored:
        return VisionTower(stored, select_layer=select_layer, select_feature=select_feature, delay_load=delay_load)
    tower = VisionTower({**read_vision_config(folder), "_name_or_path": os.fspath(folder)},
                        select_layer=select_layer, select_feature=select_feature, delay_load=delay_load)
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        tower.set_image_processor(folder)
    return tower
