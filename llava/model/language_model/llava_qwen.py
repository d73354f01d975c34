"""`LlavaQwenForCausalLM`: a Qwen2 / Qwen2.5 LLM with LLaVA's image splice.

As `llava_llama.py`, for the Qwen2 family: only the class names and the
`model_type` differ; everything else lives in the mixins of `llava_arch.py`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwenConfig(Qwen2Config):
    """A `Qwen2Config` that also carries LLaVA's `mm_*` attributes (see docs/Architecture.md)."""

    model_type = "llava_qwen"


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig


class LlavaQwenForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwenConfig
    inner_model_class = LlavaQwenModel


AutoConfig.register("llava_qwen", LlavaQwenConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwenConfig, LlavaQwenForCausalLM, exist_ok=True)
