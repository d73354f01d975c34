"""Collecting and saving the trained weights, under ZeRO-3 too.

Under DeepSpeed ZeRO-3 each rank holds only a shard of every parameter; the
16-bit full model is gathered by DeepSpeed itself on save
(`stage3_gather_16bit_weights_on_model_save`), but the partial state dicts
LLaVA writes (`mm_projector.bin`, `non_lora_trainables.bin`, the LoRA adapter)
are gathered here with `deepspeed.zero.GatheredParameters`, on every rank,
before rank 0 writes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"


def _gathered(params: list[nn.Parameter], modifier_rank: int | None = None):
    """Context in which ZeRO-3-partitioned `params` hold their full values (no-op otherwise).

    With `modifier_rank`, what that rank writes into them is kept (re-partitioned) on exit.
    """
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")], modifier_rank=modifier_rank)


def gather_state(named_params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full CPU copies of the given parameters (collective under ZeRO-3: call on every rank)."""
    named = list(named_params)
    with _gathered([p for _, p in named]):
        return {name: p.detach().cpu().clone() for name, p in named}


def projector_named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, param) of the projector and image_newline, named as in LLaVA's `mm_projector.bin`.

    Found by module identity on the inner LLaVA model, whatever wraps it
    (PEFT, DeepSpeed), so the keys are always `model.mm_projector.*` and
    `model.image_newline`.
    """
    inner = model.get_model()
    named = [(f"model.mm_projector.{n}", p) for n, p in inner.mm_projector.named_parameters()]
    newline = getattr(inner, "image_newline", None)
    if newline is not None:
        named.append(("model.image_newline", newline))
    return named


def non_lora_trainables(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters outside the LoRA adapters (projector, newline, unfrozen tower), PEFT names."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def lora_state(model: nn.Module, bias: str) -> dict[str, torch.Tensor]:
    """Gathered adapter weights (plus biases unless `lora_bias` is none), with the model's own names.

    `PeftModel.save_pretrained(state_dict=...)` then picks and renames them as PEFT does.
    """
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n or (bias != "none" and "bias" in n)]
    return gather_state(named)


def load_partial_state(model: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Copy `weights` (LLaVA/PEFT key layout) into `model`; every key must name a parameter of it."""
    params = dict(model.named_parameters())
    alias = {}
    for name in params:  # accept keys saved with or without PEFT's `base_model.model.` prefix
        alias[name] = name
        alias[name.removeprefix("base_model.model.")] = name
    missing = [k for k in weights if k not in alias]
    if missing:
        raise KeyError(f"{what}: keys not in the model: {missing[:8]}")
    targets = [params[alias[k]] for k in weights]
    with _gathered(targets, modifier_rank=0), torch.no_grad():
        for key, target in zip(weights, targets):
            target.copy_(weights[key].to(dtype=target.dtype, device=target.device))


def load_full_checkpoint(model: nn.Module, folder) -> None:
    """Load a `save_pretrained` folder (model.safetensors) into `model`, strictly.

    The Trainer's own resume loads the file with `strict=False` and only logs
    the mismatch; transformers 5 saves CLIP/SigLIP keys with a `vision_model.`
    level that the in-memory modules lack, so the tower would silently stay at
    its initial weights. Keys are renamed with the model's own conversion
    mapping (the one `from_pretrained` applies), and any key left unmatched is
    an error.
    """
    import os

    from safetensors.torch import load_file
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        import json

        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    conversions = get_model_conversion_mapping(model, add_legacy=False)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    if len(renamings) != len(conversions):
        raise NotImplementedError(f"{type(model).__name__} needs weight converters to load; resume supports renames only")
    state = {}
    for name in files:
        for key, value in load_file(os.path.join(folder, name), device="cpu").items():
            state[rename_source_key(key, renamings, [])[0]] = value
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise KeyError(f"checkpoint {folder} does not match the model: missing {missing[:6]}, "
                       f"unexpected {result.unexpected_keys[:6]}")
