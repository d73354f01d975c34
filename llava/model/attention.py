"""Pick the attention kernel: flash-attention 2 when it can run, else PyTorch SDPA.

LLaVA's scripts ask for `flash_attention_2` unconditionally and crash where
flash-attn is missing (CPU machines, new CUDA versions); we fall back to
`sdpa`, which is exact and nearly as fast, and say so once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

logger = logging.getLogger(__name__)

FLASH = "flash_attention_2"


def flash_attn_available() -> bool:
    """True when the `flash_attn` package is importable and a CUDA device exists."""
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    """Log the fallback once per distinct reason (the cache makes repeats no-ops)."""
    logger.warning("flash_attention_2 is unavailable (%s); using attn_implementation='sdpa'", reason)


def resolve_attn_implementation(requested: str | None = None) -> str:
    """The attention implementation to load models with.

    None or 'flash_attention_2' -> 'flash_attention_2' if it can run, else
    'sdpa' (warning once when flash was asked for, or when a GPU is present
    but flash-attn is not). Any other value ('sdpa', 'eager', ...) is returned as is.
    """
    if requested not in (None, FLASH):
        return requested
    if flash_attn_available():
        return FLASH
    if requested == FLASH or torch.cuda.is_available():
        reason = "no CUDA device" if not torch.cuda.is_available() else "the flash_attn package is not installed"
        _warn_fallback(reason)
    return "sdpa"
