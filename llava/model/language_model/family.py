"""One LLM family's three LLaVA classes, built the same way for every family.

A family is LLaVA's trio: a config subclass carrying the `mm_*` attributes
(docs/Architecture.md), the inner LLM with `LlavaMetaModel`, and the
`*ForCausalLM` with `LlavaMetaForCausalLM`, registered with transformers'
Auto classes. Only names and base classes differ between families, so they
are made here once; `llava_llama.py` and `llava_qwen.py` name theirs.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


def llava_family(module: str, model_type: str, names: tuple[str, str, str], config_base, model_base, causal_base):
    """(config class, inner model class, causal-LM class) named `names`, defined as if in `module`.

    `model_type` is what config.json records (LLaVA's `llava_llama`,
    `llava_qwen`); the class names are LLaVA's, so checkpoints' `architectures`
    and LLaVA's import paths match.
    """
    config_name, model_name, causal_name = names
    config_cls = type(config_name, (config_base,), {
        "__module__": module, "model_type": model_type,
        "__doc__": f"A `{config_base.__name__}` that also carries LLaVA's `mm_*` attributes (docs/Architecture.md)."})
    model_cls = type(model_name, (LlavaMetaModel, model_base), {"__module__": module, "config_class": config_cls})
    causal_cls = type(causal_name, (LlavaMetaForCausalLM, causal_base), {
        "__module__": module, "config_class": config_cls, "inner_model_class": model_cls,
        "__doc__": f"LLaVA's image splice over `{causal_base.__name__}` (llava_arch.LlavaMetaForCausalLM)."})
    AutoConfig.register(model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, causal_cls, exist_ok=True)
    return config_cls, model_cls, causal_cls
