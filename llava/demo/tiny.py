"""Tiny random stand-ins for the pretrained folders a real run starts from.

The tests and the CPU demo cannot download Vicuna or CLIP, so they build
folders with the same layout (config, safetensors weights, tokenizer or image
processor) from small configs. The tokenizers are the real ones, vendored in
`llava/demo/tokenizers`, because label masking must be checked on them.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path

TOKENIZER_FIXTURES = Path(__file__).resolve().parent / "tokenizers"
TOKENIZER_NAMES = ("llama2", "mistral", "llama3", "qwen2")


def vendored_tokenizer_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder `AutoTokenizer.from_pretrained` can load, unpacked from the vendored `.xz`.

    Unpacked once per content hash into `cache_dir` (default
    `~/.cache/llava-next/tokenizers`), so repeated calls are cheap.
    """
    if name not in TOKENIZER_NAMES:
        raise ValueError(f"unknown vendored tokenizer {name!r}; have {TOKENIZER_NAMES}")
    src = TOKENIZER_FIXTURES / name
    packed = (src / "tokenizer.json.xz").read_bytes()
    digest = hashlib.sha256(packed).hexdigest()[:12]
    root = Path(cache_dir or Path.home() / ".cache" / "llava-next" / "tokenizers")
    dst = root / f"{name}-{digest}"
    if not (dst / "tokenizer.json").is_file():
        tmp = root / f".{name}-{digest}-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "tokenizer.json").write_bytes(lzma.decompress(packed))
        shutil.copy(src / "tokenizer_config.json", tmp / "tokenizer_config.json")
        try:
            tmp.rename(dst)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def load_vendored_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vendored_tokenizer_dir(name))


def build_tiny_llm(
    dst,
    family: str = "llama",
    tokenizer: str = "llama2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """A random `LlamaForCausalLM` / `Qwen2ForCausalLM` folder with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(vendored_tokenizer_dir(tokenizer))
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if family == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif family == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown LLM family {family!r}; have llama, qwen2")
    torch.manual_seed(seed)
    model = cls(config)
    dst = Path(dst)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def build_tiny_vision_tower(
    dst,
    family: str = "clip",
    image_size: int = 56,
    patch_size: int = 14,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """A random CLIP or SigLIP vision-model folder with its (PIL) image processor."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    common = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    torch.manual_seed(seed)
    if family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(projection_dim=hidden_size, **common))
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    elif family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**common))
        processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"unknown vision family {family!r}; have clip, siglip")
    dst = Path(dst)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst
