"""`LlavaQwenForCausalLM`: a Qwen2 / Qwen2.5 LLM with LLaVA's image splice.

The class, config and state-dict layout are LLaVA's, so LLaVA's scripts and
lmms-eval's `llava` adapter load our checkpoints unchanged; the image work is
shared with the Llama wrapper through the mixins in `llava_arch.py`.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwenConfig(Qwen2Config):
    """A `Qwen2Config` that also carries LLaVA's `mm_*` attributes (see docs/Architecture.md)."""

    model_type = "llava_qwen"


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig


class LlavaQwenForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwenConfig

    def __init__(self, config):
        # Skip Qwen2ForCausalLM.__init__ so the inner model is built once, as the LLaVA subclass.
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model


AutoConfig.register("llava_qwen", LlavaQwenConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwenConfig, LlavaQwenForCausalLM, exist_ok=True)
