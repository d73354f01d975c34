"""Collecting the trained weights for saving, under ZeRO-3 too.

Under DeepSpeed ZeRO-3 each rank holds only a shard of every parameter; the
16-bit full model is gathered by DeepSpeed itself on save
(`stage3_gather_16bit_weights_on_model_save`), but the partial state dicts
LLaVA writes (`mm_projector.bin`, `non_lora_trainables.bin`, the LoRA adapter)
are gathered here with `deepspeed.zero.GatheredParameters`, on every rank,
before rank 0 writes them. Which parameters are the projector, the file names
and the strict loaders live in `llava.model.weights`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from llava.model.weights import gathered, param_roles


def gather_state(named_params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full CPU copies of the given parameters (collective under ZeRO-3: call on every rank)."""
    named = list(named_params)
    with gathered([p for _, p in named]):
        return {name: p.detach().cpu().clone() for name, p in named}


def projector_named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, param) of the projector and image_newline, named as in LLaVA's `mm_projector.bin`."""
    return param_roles(model)["projector"]


def non_lora_trainables(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters outside the LoRA adapters (projector, newline, unfrozen tower), PEFT names."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def lora_state(model: nn.Module, bias: str) -> dict[str, torch.Tensor]:
    """Gathered adapter weights (plus biases unless `lora_bias` is none), with the model's own names.

    `PeftModel.save_pretrained(state_dict=...)` then picks and renames them as PEFT does.
    """
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n or (bias != "none" and "bias" in n)]
    return gather_state(named)
