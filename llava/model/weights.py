"""Which parameters are the projector, the newline and the tower; which files hold them; how they load, strictly.

One home for facts that the trainer's lr groups, `set_trainable`, saving,
throughput, the pretrain adapter load and `load_pretrained_model` all need, so
they cannot drift apart:
- `param_roles(model)`: the multimodal parameters by module identity, named
  as in LLaVA's state dicts; every other parameter is the LLM's;
- the file names of LLaVA's partial checkpoints;
- `load_partial_state`: the one loader of a partial state dict (every key must
  name a parameter of the model, with its shape; required keys must be there);
- `file_tensor_shapes` / `check_matches_files`: the tensors a `save_pretrained`
  folder holds, read from the safetensors headers themselves, compared with a
  model, so nothing `from_pretrained` re-initialised can pass unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightRenaming, rename_source_key

PROJECTOR_FILE = "mm_projector.bin"
"""Pretrain stage output: `model.mm_projector.*` and `model.image_newline` (LLaVA's name)."""
NON_LORA_FILE = "non_lora_trainables.bin"
"""LoRA output: the trainable tensors outside the adapters (projector, newline, unfrozen tower, tower LoRA), PEFT names."""
SAFE_WEIGHTS_FILE = "model.safetensors"
SAFE_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
BIN_WEIGHTS_FILE = "pytorch_model.bin"  # LLaVA-1.5's releases; read with weights_only, never unpickled
BIN_WEIGHTS_INDEX_FILE = "pytorch_model.bin.index.json"
PEFT_PREFIX = "base_model.model."


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The LLaVA model inside a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def param_roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{"projector": [...], "vision_tower": [...]}: (LLaVA name, parameter) of each multimodal part.

    Found by module identity on the inner LLaVA model, whatever wraps it
    (PEFT, DeepSpeed). `image_newline` belongs to the projector: it trains,
    saves (`mm_projector.bin`) and takes the projector's learning rate with it.
    Names are the outer model's (`model.mm_projector.0.weight`,
    `model.image_newline`, `model.vision_tower.*`).
    """
    base = unwrap_peft(model)
    inner = base.get_model() if hasattr(base, "get_model") else base  # the outer LLaVA model or its inner one
    projector = getattr(inner, "mm_projector", None)
    named = [(f"model.mm_projector.{n}", p) for n, p in projector.named_parameters()] if projector is not None else []
    newline = getattr(inner, "image_newline", None)
    if newline is not None:
        named.append(("model.image_newline", newline))
    tower = inner.get_vision_tower() if hasattr(inner, "get_vision_tower") else None
    tower_named = [(f"model.vision_tower.{n}", p) for n, p in tower.named_parameters()] if tower is not None else []
    return {"projector": named, "vision_tower": tower_named}


def role_ids(model: nn.Module) -> dict[str, set[int]]:
    """ids of the parameters of each multimodal part (see `param_roles`)."""
    return {role: {id(p) for _, p in named} for role, named in param_roles(model).items()}


def gathered(params: list[nn.Parameter], modifier_rank: int | None = None):
    """Context in which ZeRO-3-partitioned `params` hold their full values (no-op otherwise).

    With `modifier_rank`, what that rank writes into them is kept (re-partitioned) on exit.
    """
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed  # only reached under ZeRO-3, where it is installed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def _full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", None) or param.shape)  # ZeRO-3 keeps the full shape in ds_shape


def load_partial_state(model: nn.Module, weights: dict[str, torch.Tensor], what: str, required=(), prefix: str = "",
                       exact: bool = False) -> None:
    """Copy `weights` into `model`'s parameters, strictly; collective under ZeRO-3.

    Keys may carry PEFT's `base_model.model.` prefix or not, on either side.
    `prefix` is what file keys have in front of the model's own names (e.g.
    "model." when loading `mm_projector.bin` into the inner LLaVA model).
    Refused, naming the tensors: a key that names no parameter (or, with
    `exact`, none of `required`), a shape that differs (no broadcasting), a
    `required` name (file-side, without PEFT's prefix) that is absent.
    """
    params = {}
    for name, param in model.named_parameters():
        params[prefix + name.removeprefix(PEFT_PREFIX)] = param
    keys = {key: key.removeprefix(PEFT_PREFIX) for key in weights}
    allowed = set(required) if exact else params
    unknown = sorted(k for k, name in keys.items() if name not in params or name not in allowed)
    if unknown:
        raise KeyError(f"{what}: tensors the model does not have: {unknown[:8]}")
    missing = sorted(set(required) - set(keys.values()))
    if missing:
        raise KeyError(f"{what} lacks {missing}; without them these weights would stay at their initial values")
    wrong = [f"{k} {tuple(weights[k].shape)} vs model {_full_shape(params[n])}"
             for k, n in keys.items() if tuple(weights[k].shape) != _full_shape(params[n])]
    if wrong:
        raise ValueError(f"{what}: wrong tensor shapes: {wrong[:8]}")
    targets = [params[keys[k]] for k in weights]
    with gathered(targets, modifier_rank=0), torch.no_grad():
        for key, target in zip(weights, targets):
            target.copy_(weights[key].to(dtype=target.dtype, device=target.device))


def safetensors_shapes(path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a .safetensors header, checking the file is as long as the header says.

    Reads only the header, so it is cheap on multi-GB shards and catches a
    truncated write.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable safetensors header ({err})") from err
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if path.stat().st_size < 8 + length + end:
        raise ValueError(f"{path}: truncated ({path.stat().st_size} bytes, the header needs {8 + length + end})")
    return {name: tuple(v["shape"]) for name, v in header.items()}


def weight_files(folder) -> list[Path]:
    """The weight files of a `save_pretrained` folder (through the index when sharded): safetensors, else `.bin`."""
    folder = Path(folder)
    for index, single in ((SAFE_WEIGHTS_INDEX_FILE, SAFE_WEIGHTS_FILE), (BIN_WEIGHTS_INDEX_FILE, BIN_WEIGHTS_FILE)):
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text())["weight_map"].values()
            return [folder / name for name in sorted(set(shards))]
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(f"{folder} has none of {SAFE_WEIGHTS_FILE}, {BIN_WEIGHTS_FILE} or their indexes")


def tensor_shapes(path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of one weight file: the safetensors header, or a `.bin` loaded onto the meta device."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_shapes(path)
    return {key: tuple(t.shape) for key, t in torch.load(path, map_location="meta", weights_only=True).items()}


def _renamer(model):
    """key -> the model's own name, with the renames `from_pretrained` applies (e.g. CLIP's `vision_model.` level)."""
    conversions = get_model_conversion_mapping(model, add_legacy=False)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    if len(renamings) != len(conversions):
        raise NotImplementedError(f"{type(model).__name__} needs weight converters to load; only renames are supported")
    return lambda key: rename_source_key(key, renamings, [])[0]


def file_tensor_shapes(folder, model) -> dict[str, tuple[int, ...]]:
    """{model name: shape} of every tensor in the folder's files (headers only), keys renamed as the model names them."""
    rename = _renamer(model)
    shapes = {}
    for path in weight_files(folder):
        for key, shape in tensor_shapes(path).items():
            shapes[rename(key)] = shape
    return shapes


def check_matches_files(model: nn.Module, folder, may_lack: tuple[str, ...] = (), merged: tuple[str, ...] = ()) -> int:
    """Raise unless the folder's files hold exactly the model's tensors, with its shapes; returns their count.

    Tied weights (e.g. `lm_head.weight` when `tie_word_embeddings`) are stored once and not expected.
    `may_lack`: name prefixes the files may omit because they were loaded from elsewhere
    (a reference checkpoint's tower, read from its own folder).
    `merged`: name prefixes the files hold but the model no longer has, because they were folded
    into its other weights at load (a vision-tower LoRA); they are not counted.
    """
    files = file_tensor_shapes(folder, model)
    files = {n: s for n, s in files.items() if not (merged and n.startswith(merged))}
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}
    missing = sorted(n for n in set(expected) - set(files) if not n.startswith(may_lack))
    extra = sorted(set(files) - set(expected) - tied)
    wrong = [f"{n} {files[n]} vs model {expected[n]}" for n in sorted(set(files) & set(expected)) if files[n] != expected[n]]
    problems = ([f"missing {missing[:8]}"] if missing else []) + ([f"extra {extra[:8]}"] if extra else []) + (
        [f"wrong shape {wrong[:8]}"] if wrong else [])
    if problems:
        raise ValueError(f"{folder}: the weight files do not match {type(model).__name__}: " + "; ".join(problems))
    return len(files)


def load_full_checkpoint(model: nn.Module, folder) -> None:
    """Load a `save_pretrained` folder into `model`, strictly (checked against the files' headers first).

    The Trainer's own resume loads with `strict=False` and only logs the
    mismatch; transformers 5 saves CLIP/SigLIP keys with a `vision_model.`
    level that the in-memory modules lack, so the tower would silently stay
    at its initial weights. Keys are renamed as `from_pretrained` does.
    """
    check_matches_files(model, folder)
    rename = _renamer(model)
    state = {}
    for path in weight_files(folder):
        for key, value in load_file(path, device="cpu").items():
            state[rename(key)] = value
    model.load_state_dict(state, strict=False)  # exact by the check above; tied targets are filled by the tie
