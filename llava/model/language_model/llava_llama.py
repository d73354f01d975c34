"""`LlavaLlamaForCausalLM`: a Llama / Vicuna / Llama-3 LLM with LLaVA's image splice.

The class, config and state-dict layout are LLaVA's, so LLaVA's scripts and
lmms-eval's `llava` adapter load our checkpoints unchanged. All the work is
in `llava_arch.py`'s mixins; `family.py` builds the classes.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.language_model.family import llava_family

LlavaConfig, LlavaLlamaModel, LlavaLlamaForCausalLM = llava_family(
    __name__, "llava_llama", ("LlavaConfig", "LlavaLlamaModel", "LlavaLlamaForCausalLM"),
    LlamaConfig, LlamaModel, LlamaForCausalLM,
)
