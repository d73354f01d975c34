"""`LlavaQwenForCausalLM`: a Qwen2 / Qwen2.5 LLM with LLaVA's image splice (see `llava_llama.py`)."""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from llava.model.language_model.family import llava_family

LlavaQwenConfig, LlavaQwenModel, LlavaQwenForCausalLM = llava_family(
    __name__, "llava_qwen", ("LlavaQwenConfig", "LlavaQwenModel", "LlavaQwenForCausalLM"),
    Qwen2Config, Qwen2Model, Qwen2ForCausalLM,
)
