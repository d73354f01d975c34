"""`--use_liger_kernel` for our LLaVA wrappers: Liger's RMSNorm, SwiGLU, RoPE and fused linear cross-entropy.

transformers' own `--use_liger_kernel` finds the patch by `model_type`, which
knows plain `llama` / `qwen2` models but not `llava_llama` / `llava_qwen`, and
raises where liger-kernel is missing. `enable_liger_kernel` applies Liger's
per-family patch to our inner LLM instead, and gives the wrapper a
`fused_linear_loss` so `LlavaMetaForCausalLM.forward` passes the last hidden
states and the lm_head weight straight to Liger's fused linear cross-entropy:
the `[tokens, vocab]` logits are never materialised (Llama-3: 128,256 columns).

Without liger-kernel or a CUDA device: one warning, and training goes on with
transformers' kernels and loss. Under ZeRO-3 the lm_head weight is
partitioned outside its own forward, so only the loss stays plain there.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn
from transformers import LlamaModel, Qwen2Model
from transformers.integrations import is_deepspeed_zero3_enabled

from llava.constants import IGNORE_INDEX
from llava.model.weights import unwrap_peft

logger = logging.getLogger(__name__)

# inner LLM class -> Liger's patch function for that family (liger_kernel.transformers)
LIGER_PATCHES = ((Qwen2Model, "apply_liger_kernel_to_qwen2"), (LlamaModel, "apply_liger_kernel_to_llama"))


def liger_unavailable_reason() -> str | None:
    """Why Liger's kernels cannot run here, or None when they can."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "the liger-kernel package is not installed (pip install liger-kernel)"
    if not torch.cuda.is_available():
        return "no CUDA device (Liger's kernels are Triton GPU kernels)"
    return None


def linear_cross_entropy(hidden, weight, targets, num_items_in_batch=None, loss_fn=None):
    """The `fused_linear_loss` contract: hidden [N, H], lm_head weight [V, H], shifted targets [N].

    Sum over non-IGNORE targets divided by `num_items_in_batch` when given (the
    Trainer's count over the whole optimizer step), else the token mean.
    `loss_fn(hidden, weight, targets, reduction)` is the kernel; the default is
    plain torch (logits materialised), the reference the tests hold Liger's path to.
    """
    reduction = "sum" if num_items_in_batch is not None else "mean"
    if loss_fn is None:
        logits = (hidden @ weight.t()).float()
        loss = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    else:
        loss = loss_fn(hidden, weight, targets, reduction)
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss


def _liger_flce(hidden, weight, targets, reduction):
    # Imported here: liger-kernel is optional, and only reached once enable_liger_kernel found it.
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def liger_linear_loss(hidden, weight, targets, num_items_in_batch=None):
    """Liger's fused linear cross-entropy under the `fused_linear_loss` contract."""
    return linear_cross_entropy(hidden, weight, targets, num_items_in_batch, loss_fn=_liger_flce)


def enable_liger_kernel(model) -> bool:
    """Apply Liger's RMSNorm/SwiGLU/RoPE to the inner LLM and its fused loss to the wrapper; False when it cannot.

    `model` is our wrapper, possibly inside a PEFT model.
    """
    base = unwrap_peft(model)
    reason = liger_unavailable_reason()
    if reason is not None:
        logger.warning("--use_liger_kernel: %s; training continues with transformers' kernels and loss", reason)
        return False
    import liger_kernel.transformers as liger  # optional dependency, present (checked above)

    patch = next(name for cls, name in LIGER_PATCHES if isinstance(base.get_model(), cls))
    getattr(liger, patch)(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                          fused_linear_cross_entropy=False, model=base)
    if is_deepspeed_zero3_enabled():
        logger.warning("--use_liger_kernel: ZeRO-3 partitions the lm_head weight, so the loss stays transformers' "
                       "(RMSNorm, SwiGLU and RoPE kernels are on)")
    elif type(base.lm_head) is not nn.Linear:
        logger.warning("--use_liger_kernel: lm_head is a %s (LoRA?), so the loss stays transformers'",
                       type(base.lm_head).__name__)
    else:
        base.fused_linear_loss = liger_linear_loss
    logger.info("Liger kernels on (%s)", patch)
    return True
