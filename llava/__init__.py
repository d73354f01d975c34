"""LLaVA-NeXT training and inference, laid out like LLaVA's own package."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import llava` (or `llava.anyres`) does not import torch models.
    if name in ("LlavaLlamaForCausalLM", "LlavaQwenForCausalLM"):
        from llava import model

        return getattr(model, name)
    raise AttributeError(name)
