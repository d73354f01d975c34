"""Folders written by LLaVA-1.5's and LLaVA-NeXT's own code: their config, read as ours.

Their `config.json` differs from ours in two ways that matter:
- no `mm_vision_config`: the tower is known only by its folder,
  `mm_vision_tower`, whose config we read (never its weights: loading weights
  inside transformers' meta-device model init raises);
- `model_type` may be `llava` (LLaVA-1.5's Llama checkpoints), which
  transformers maps to its own, different, `LlavaConfig` ("'dict' object has no
  attribute 'to_dict'"); it means our `llava_llama`.

`read_llava_config` fixes both before a config object is built. The tower's
weights come from the checkpoint when it saved them, else from the folder
(`checkpoint_has_tower`), as LLaVA's loader does.
"""

from __future__ import annotations

import json
from pathlib import Path

from llava.model.weights import tensor_shapes, weight_files
from llava.vision_config import read_vision_config

MODEL_TYPES = {"llava": "llava_llama", "llava_llama": "llava_llama", "llama": "llava_llama",
               "llava_qwen": "llava_qwen", "qwen2": "llava_qwen"}
"""`model_type` on disk -> our model type."""
TOWER_PREFIX = "model.vision_tower."


def config_dict(path) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    return json.loads(config_file.read_text())


def model_type(path, model_name: str = "") -> str:
    """Our `model_type` for a folder: by its config's type, by the name only when the type says nothing."""
    kind = config_dict(path).get("model_type", "")
    if kind in MODEL_TYPES:
        return MODEL_TYPES[kind]
    return "llava_qwen" if "qwen" in (model_name or "").lower() else "llava_llama"


def normalized(raw: dict, path) -> dict:
    """`raw` with our model_type and, for a multimodal config, the tower's config stored in it."""
    out = dict(raw)
    out["model_type"] = MODEL_TYPES.get(raw.get("model_type", ""), raw.get("model_type", ""))
    tower = out.get("mm_vision_tower")
    if tower and not out.get("mm_vision_config"):
        if not (Path(tower) / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}/config.json has no mm_vision_config and its mm_vision_tower folder {tower!r} was not found; "
                "point mm_vision_tower at a local copy of the vision tower (e.g. openai/clip-vit-large-patch14-336)"
            )
        out["mm_vision_config"] = read_vision_config(tower)
    return out


def read_llava_config(path, config_class):
    """The folder's config as `config_class` (ours), normalised (see the module docstring)."""
    raw = normalized(config_dict(path), path)
    raw.pop("model_type", None)
    return config_class.from_dict(raw)


def checkpoint_keys(path) -> set[str]:
    """Tensor names in a folder's weights (safetensors or LLaVA-1.5's `.bin`), read as the strict checks read them."""
    try:
        return {key for file in weight_files(path) for key in tensor_shapes(file)}
    except FileNotFoundError:
        return set()


def checkpoint_has_tower(path) -> bool:
    """Whether the folder saved the vision tower's weights (LLaVA-1.5 releases did not)."""
    return any(k.startswith(TOWER_PREFIX) for k in checkpoint_keys(path))


def load_tower_from_folder(model, folder) -> None:
    """Pretrained tower weights (and processor) from `folder` into the model's already built tower."""
    from llava.model.vision_tower import VisionTower

    if not folder or not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(
            f"this checkpoint keeps no vision tower weights; its mm_vision_tower folder {folder!r} "
            "is needed and was not found"
        )
    tower = model.get_vision_tower()
    fresh = VisionTower(folder, select_layer=tower.select_layer, select_feature=tower.select_feature)
    tower.vision_tower.load_state_dict(fresh.vision_tower.state_dict())
    tower.image_processor = fresh.image_processor


def from_pretrained(cls, path, config=None, **kwargs):
    """`cls.from_pretrained` for our folders and the reference code's alike.

    The config is normalised (`read_llava_config`) unless given; a
    multimodal checkpoint that saved no tower weights gets them from its
    `mm_vision_tower` folder, as LLaVA's loader does (else they would stay random).
    """
    config = config if config is not None else read_llava_config(path, cls.config_class)
    model = cls.from_pretrained(path, config=config, **kwargs)
    if getattr(config, "mm_vision_tower", None) and not checkpoint_has_tower(path):
        load_tower_from_folder(model, config.mm_vision_tower)
    return model


SENTENCEPIECE_FILE = "tokenizer.model"


def keep_sentencepiece(src, dst) -> bool:
    """Copy `src`'s SentencePiece `tokenizer.model` into `dst` when it has one; True if copied.

    transformers 5 saves only `tokenizer.json`; the reference code's
    transformers 4.x slow Llama tokenizers need the SentencePiece file, so a
    folder we save keeps it whenever the base model had one.
    """
    import shutil

    source = Path(src) / SENTENCEPIECE_FILE
    if not source.is_file() or not Path(dst).is_dir():
        return False
    shutil.copyfile(source, Path(dst) / SENTENCEPIECE_FILE)
    return True
