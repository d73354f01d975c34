"""Step 1-2 of the quick start: tiny "pretrained" folders and the synthetic dataset.

The LLM is a random Llama with the real Llama-2 tokenizer (what Vicuna uses,
so the `v1` template is exercised on real ids); the vision tower a random
CLIP ViT with 56-px tiles of 14-px patches. Sizes are chosen so that both
training stages finish in minutes on two CPU cores and still learn the task.

    python -m llava.demo.prepare --work demo_runs/tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llava.demo.data import build
from llava.demo.tiny import build_tiny_llm, build_tiny_vision_tower

LLM_SIZE = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                max_position_embeddings=1024)
"""Tiny Llama: big enough to learn a six-way answer from image tokens in a few hundred steps."""
TOWER_SIZE = dict(image_size=56, patch_size=14, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
"""Tiny CLIP ViT: 56-px tiles, 4x4 patches, so one image is 16 base tokens plus its grid."""


def prepare(work, train: int = 640, test: int = 120, seed: int = 0) -> dict:
    work = Path(work)
    llm = build_tiny_llm(work / "base" / "llm", family="llama", tokenizer="llama2", seed=seed, **LLM_SIZE)
    tower = build_tiny_vision_tower(work / "base" / "clip", family="clip", seed=seed, **TOWER_SIZE)
    paths = build(work / "data", train=train, test=test, seed=seed)
    return {"llm": llm, "vision_tower": tower, **paths}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder for base/ (models) and data/")
    parser.add_argument("--train", type=int, default=640, help="training images")
    parser.add_argument("--test", type=int, default=120, help="held-out images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = prepare(args.work, args.train, args.test, args.seed)
    print(f"demo: prepared tiny models and {args.train}/{args.test} images under {args.work}")
    return paths


if __name__ == "__main__":
    main()
