"""Pretrain-stage training throughput: samples/s, real tokens/s and MFU.

Default shapes are LLaVA-NeXT-7B's: a Vicuna-7B-shaped LLM (random weights),
a CLIP-L/336-shaped tower, an mlp2x_gelu projector, anyres with 672x672
images (5 tiles each, 2928 image tokens), spatial_unpad. Only the projector
and image_newline train, as in the pretrain stage. The step is the model's own
forward/backward through LLaVATrainer's optimizer groups; FLOPs come from
`llava.train.throughput.flops_per_token`, the figure the training logs use.

    python bench/train_throughput.py                 # GPU, bf16, real width
    python bench/train_throughput.py --tiny          # CPU smoke run at tiny width
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava.train.llava_trainer import build_param_groups  # noqa: E402
from llava.train.throughput import count_batch_tokens, device_peak_flops, flops_per_token  # noqa: E402

SHAPES = {
    # LLM (Vicuna-7B) and tower (CLIP-L/336) sizes; tiny: the test fixtures' scale.
    "real": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000,
                 v_hidden=1024, v_layers=24, v_heads=16, v_inter=4096, tile=336),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=32000,
                 v_hidden=32, v_layers=2, v_heads=4, v_inter=64, tile=56),
}


def build_model(shape: dict, dtype: torch.dtype, device: str, tmp: Path):
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM
    from llava.demo.tiny import build_tiny_vision_tower

    tower_dir = build_tiny_vision_tower(tmp / "tower", image_size=shape["tile"], hidden_size=shape["v_hidden"],
                                        num_layers=shape["v_layers"], num_heads=shape["v_heads"],
                                        intermediate_size=shape["v_inter"])
    config = LlavaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         intermediate_size=shape["inter"], max_position_embeddings=8192, tie_word_embeddings=False)
    with torch.device(device):
        model = LlavaLlamaForCausalLM(config).to(dtype)
    model_args = SimpleNamespace(vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu",
                                 mm_patch_merge_type="spatial_unpad", image_aspect_ratio="anyres",
                                 image_grid_pinpoints=None)
    model.get_model().initialize_vision_modules(model_args)
    model.config.tokenizer_model_max_length = 8192
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    model.get_model().image_newline.requires_grad_(True)
    return model


def make_batch(batch: int, text_len: int, tile: int, vocab: int, device: str, dtype: torch.dtype) -> dict:
    """`batch` samples: one 2x2-tile-sized image (5 tiles with the base) and `text_len` text tokens each."""
    ids = torch.randint(3, vocab, (batch, text_len), device=device)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : text_len // 2] = IGNORE_INDEX
    images = [torch.randn(5, 3, tile, tile, device=device, dtype=dtype) for _ in range(batch)]
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                images=images, image_sizes=[(2 * tile, 2 * tile)] * batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke run) instead of 7B / CLIP-L")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default 4 real, 2 tiny)")
    parser.add_argument("--text_len", type=int, default=128, help="text tokens per sample besides the image")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 real, 3 tiny)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--grad_ckpt", action="store_true", help="activation checkpointing in the LLM")
    parser.add_argument("--json", type=str, default=None, help="also write the result to this file")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape = SHAPES["tiny" if args.tiny else "real"]
    batch = args.batch or (2 if args.tiny else 4)
    steps = args.steps or (3 if args.tiny else 10)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(shape, dtype, device, Path(tmp))
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    groups = build_param_groups(model, [n for n, _ in model.named_parameters()], 1e-3, 0.0)
    optimizer = torch.optim.AdamW(groups, fused=cuda)
    data = make_batch(batch, args.text_len, shape["tile"], shape["vocab"], device, dtype)
    layout = model.get_image_layout()
    _, tokens, padded = count_batch_tokens(data, layout, None)
    flops = flops_per_token(model)
    step_flops = tokens * (flops["llm"] + flops["attn_per_ctx"] * (padded // batch) / 2)
    step_flops += batch * 5 * layout.tokens_per_tile * flops["vision_patch"]

    def step():
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = device_peak_flops() if cuda else None
    result = {
        "shape": "tiny" if args.tiny else "vicuna7b+clipL336",
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch, "tokens_per_sample": tokens // batch, "image_tokens_per_sample": layout.num_tokens((2 * shape["tile"],) * 2),
        "step_s": round(seconds, 4),
        "samples_per_s": round(batch / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "model_tflops_per_step": round(step_flops / 1e12, 3),
        "mfu": round(step_flops / seconds / peak, 4) if peak else None,
        "peak_used": peak,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
