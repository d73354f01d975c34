"""LoRA on the vision tower's linear layers (XTuner's LLaVA-Llama-3 finetune: r 64, alpha 16).

The tower's own weights stay frozen and keep their names; each of its
`nn.Linear` layers gets a low-rank branch whose output is added to the
layer's output by a forward hook:

    y = W x + b + (alpha / r) * up(down(dropout(x)))      down: [r, in], up: [out, r]

The branches live in `VisionTower.vision_lora` (an `nn.ModuleDict`), so they
are ordinary parameters of the LLaVA model: saved under
`model.vision_tower.vision_lora.*`, reloaded strictly on resume, in
`non_lora_trainables.bin` next to an LLM LoRA adapter, gathered by ZeRO-3
like any module (each branch is called as a module). The tower's checkpoint
keys (`model.vision_tower.vision_tower.*`) are those of a plain tower, so
`merge_vision_lora` folds the branches into the weights and what remains is
a plain LLaVA model, which is what `load_pretrained_model` returns and the
HF converter maps. PEFT is not used here because its wrapped layers rename
the tower's weights (`base_layer.weight`), which every loader and the HF
mapping would then have to know about.

The model config records the setting as `mm_vision_lora` = {"r", "alpha",
"dropout"} (None or absent: no branches), so a checkpoint rebuilds the
branches before its weights load.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODULE_NAME = "vision_lora"
"""Attribute of the VisionTower that holds the branches (and so their checkpoint key prefix)."""
STATE_PREFIX = f"model.vision_tower.{MODULE_NAME}."
"""Where the branches are in a LLaVA model's state dict."""


class LoRABranch(nn.Module):
    """The low-rank update of one linear layer; `up` starts at zero, so a new branch changes nothing."""

    def __init__(self, linear: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        if r <= 0:
            raise ValueError(f"mm_vision_lora r must be positive, got {r}")
        weight = linear.weight
        self.down = nn.Linear(linear.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        self.up = nn.Linear(r, linear.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = alpha / r
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # PEFT's LoRA init: random A, zero B
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.down.weight.dtype)
        return self.up(self.down(self.dropout(x))) * self.scale

    def delta(self) -> torch.Tensor:
        """[out, in]: what merging adds to the layer's weight."""
        return (self.up.weight.float() @ self.down.weight.float()) * self.scale


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot hold dots


def target_linears(tower: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer of the HF vision model (CLIP: q/k/v/out_proj, fc1, fc2), as XTuner targets them."""
    return {name: module for name, module in tower.vision_tower.named_modules() if isinstance(module, nn.Linear)}


def _hook(branch: LoRABranch):
    def add_branch(module, inputs, output):
        return output + branch(inputs[0]).to(output.dtype)

    return add_branch


def add_vision_lora(tower: nn.Module, r: int, alpha: float, dropout: float) -> None:
    """Attach a LoRA branch to every linear of `tower` (a loaded VisionTower); the tower itself is unchanged."""
    if getattr(tower, MODULE_NAME, None) is not None:
        raise ValueError("the vision tower already has LoRA branches")
    targets = target_linears(tower)
    if not targets:
        raise ValueError(f"the vision tower {type(tower.vision_tower).__name__} has no linear layer for LoRA")
    branches = nn.ModuleDict({_key(name): LoRABranch(linear, r, alpha, dropout) for name, linear in targets.items()})
    setattr(tower, MODULE_NAME, branches)
    tower._vision_lora_hooks = [linear.register_forward_hook(_hook(branches[_key(name)]))
                                for name, linear in targets.items()]


def has_vision_lora(tower) -> bool:
    return tower is not None and getattr(tower, MODULE_NAME, None) is not None


@torch.no_grad()
def merge_vision_lora(tower: nn.Module) -> None:
    """Fold every branch into its layer's weight, remove hooks and branches: a plain tower remains."""
    branches = getattr(tower, MODULE_NAME)
    for name, linear in target_linears(tower).items():
        branch = branches[_key(name)]
        linear.weight.copy_((linear.weight.float() + branch.delta().to(linear.weight.device)).to(linear.weight.dtype))
    for handle in tower._vision_lora_hooks:
        handle.remove()
    del tower._vision_lora_hooks
    delattr(tower, MODULE_NAME)


def merge_model_vision_lora(model) -> bool:
    """Merge the tower's LoRA of a LLaVA model and clear `config.mm_vision_lora`; False when it had none."""
    tower = model.get_vision_tower()
    if not has_vision_lora(tower):
        return False
    merge_vision_lora(tower)
    model.config.mm_vision_lora = None
    return True
