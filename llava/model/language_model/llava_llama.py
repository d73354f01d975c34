"""`LlavaLlamaForCausalLM`: a Llama / Vicuna / Llama-3 LLM with LLaVA's image splice.

The class, config and state-dict layout are LLaVA's, so LLaVA's scripts and
lmms-eval's `llava` adapter load our checkpoints unchanged; the image work is
shared with the Qwen2 wrapper through the mixins in `llava_arch.py`.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaConfig(LlamaConfig):
    """A `LlamaConfig` that also carries LLaVA's `mm_*` attributes (see docs/Architecture.md)."""

    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig

    def __init__(self, config):
        # Skip LlamaForCausalLM.__init__ so the inner model is built once, as the LLaVA subclass.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
