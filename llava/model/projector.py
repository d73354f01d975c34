"""The vision-to-language projector, with LLaVA's module layout.

The module shapes decide the state-dict keys (`mm_projector.weight` for
`linear`; `mm_projector.0.*`, `mm_projector.2.*` for `mlp2x_gelu`), which must
stay LLaVA's so `mm_projector.bin` files and checkpoints interchange.
"""

from __future__ import annotations

import re

from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


class IdentityMap(nn.Module):
    """No projection: vision features already have the LLM's width."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """Projector for `config.mm_projector_type`: 'linear', 'mlpNx_gelu' (N >= 1 linears), 'identity'.

    Reads `config.mm_hidden_size` (vision width) and `config.hidden_size` (LLM width).
    """
    kind = getattr(config, "mm_projector_type", "linear") or "linear"
    vision, hidden = int(config.mm_hidden_size), int(config.hidden_size)
    if kind == "linear":
        return nn.Linear(vision, hidden)
    match = _MLP.match(kind)
    if match:
        depth = int(match.group(1))
        if depth < 1:
            raise ValueError(f"mm_projector_type {kind!r} needs at least one linear layer")
        layers = [nn.Linear(vision, hidden)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        return nn.Sequential(*layers)
    if kind == "identity":
        if vision != hidden:
            raise ValueError(f"mm_projector_type 'identity' needs mm_hidden_size {vision} == hidden_size {hidden}")
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {kind!r}; expected 'linear', 'mlpNx_gelu' or 'identity'")
