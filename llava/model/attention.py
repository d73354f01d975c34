"""Pick the attention kernel: flash-attention 2 when it can run, else PyTorch SDPA; SDPA per packed sample.

LLaVA's scripts ask for `flash_attention_2` unconditionally and crash where
flash-attn is missing (CPU machines, new CUDA versions); we fall back to
`sdpa`, which is exact and nearly as fast, and say so once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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


# ---- padding-free (packed) batches without flash-attn ----
PACKED_SDPA = "sdpa_packed"
"""SDPA run per packed sample: the CPU / no-flash-attn path of `--packing True` (docs/Packing.md)."""


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal SDPA on each packed sample on its own; a padded batch takes plain SDPA.

    query [B, heads, T, D], key/value [B, kv_heads, T, D] -> [B, T, heads, D],
    as transformers' `sdpa_attention_forward`. Plain SDPA on a packed row would
    compute all T x T scores under a block-diagonal mask; this computes only
    each sample's own triangle, as flash-attn's varlen kernel does on a GPU.
    Sample bounds come from `cu_seq_lens_q` (our forward computes it once) or,
    failing that, from packed `position_ids`, so no caller gets cross-sample attention.
    """
    cu_seqlens = kwargs.pop("cu_seq_lens_q", None)
    position_ids = kwargs.get("position_ids")
    if cu_seqlens is None and attention_mask is None and query.shape[2] > 1 and position_ids is not None \
            and query.shape[0] == 1 and bool((position_ids.diff(dim=-1) < 0).any()):
        (cu_seqlens, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    if cu_seqlens is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    bounds = cu_seqlens.tolist()
    outputs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout, scaling,
                               is_causal=True)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """No mask at all without padding (`packed_sdpa_attention` is causal per sample); SDPA's mask otherwise."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def needs_varlen_kwargs(attn_implementation: str | None) -> bool:
    """Whether a packed forward should pass `cu_seq_lens_*` (flash-attn varlen, `PACKED_SDPA`)."""
    return attn_implementation is not None and ("flash" in attn_implementation or attn_implementation == PACKED_SDPA)


def use_packed_attention(model) -> str:
    """For `--packing True`: SDPA becomes `PACKED_SDPA`; flash-attn (varlen), eager and flex stay. Returns the choice.

    eager and flex read the sample boundaries from the position_ids
    (transformers' packed-sequence mask), exactly but over the whole row.
    """
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(PACKED_SDPA)
    return model.config._attn_implementation


# transformers' registries for custom attention kernels (its documented extension point): the kernel and its mask.
AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
