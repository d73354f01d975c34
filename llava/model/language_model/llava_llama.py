"""`LlavaLlamaForCausalLM`: a Llama / Vicuna / Llama-3 LLM with LLaVA's image splice.

The class, config and state-dict layout are LLaVA's, so LLaVA's scripts and
lmms-eval's `llava` adapter load our checkpoints unchanged; everything but the
LLM family lives in the mixins of `llava_arch.py`, shared with the Qwen2 wrapper.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaConfig(LlamaConfig):
    """A `LlamaConfig` that also carries LLaVA's `mm_*` attributes (see docs/Architecture.md)."""

    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig
    inner_model_class = LlavaLlamaModel


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
