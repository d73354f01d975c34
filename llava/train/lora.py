"""LoRA / QLoRA on the LLM only, with LLaVA's file conventions.

LLaVA targeted every linear layer by leaf name, which also put adapters into
the CLIP tower (it has q_proj/k_proj/... too). Here the targets are the LLM's
linear leaf names and the vision tower and projector are excluded by name
pattern, so only the LLM gets adapters; the projector keeps training as a
plain (non-LoRA) module and is saved in `non_lora_trainables.bin`.
"""

from __future__ import annotations

import torch
from torch import nn

from llava.model.builder import bnb_config

# Submodules of the LLaVA model that never get adapters (matched against full module names).
EXCLUDE_PATTERN = r".*(vision_tower|mm_projector|vision_resampler).*"


def check_quantization_supported(bits: int) -> None:
    """Fail fast, before any model is loaded, when --bits asks for bitsandbytes where it cannot run."""
    if bits not in (4, 8, 16):
        raise ValueError(f"--bits must be 4, 8 or 16, got {bits}")
    if bits == 16:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(f"--bits {bits} (QLoRA) quantizes with bitsandbytes, which needs a CUDA GPU; none is visible")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(f"--bits {bits} needs bitsandbytes: pip install bitsandbytes") from err


def quantization_kwargs(training_args, compute_dtype: torch.dtype) -> dict:
    """from_pretrained kwargs for 4/8-bit loading (empty for 16 bits)."""
    if training_args.bits == 16:
        return {}
    config = bnb_config(training_args.bits, compute_dtype, training_args.double_quant, training_args.quant_type)
    return {"quantization_config": config, "device_map": {"": training_args.device}}


def llm_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the LLM's linear layers (q_proj, ..., down_proj); lm_head and multimodal parts excluded."""
    import re

    names = set()
    for name, module in model.named_modules():
        if re.fullmatch(EXCLUDE_PATTERN, name) or name.endswith("lm_head"):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: nn.Module, training_args):
    """Wrap `model` in a PEFT LoRA model on its LLM linears; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=llm_linear_names(model),
        exclude_modules=EXCLUDE_PATTERN,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
