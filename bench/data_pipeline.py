"""Data pipeline speed: the preflight check (headers + batched tokenisation) and per-sample __getitem__.

    python bench/data_pipeline.py --samples 10000 --getitem 300

Builds a synthetic LLaVA-style dataset in a temporary folder: real JPEG files
of COCO-like sizes (one per image sample), 10% text-only samples, 1-3 rounds of
conversation, the real llama2 tokenizer and a CLIP-L/336 geometry (336-px
tiles, LLaVA-NeXT's five grids). Reports samples/s of `llava.data.check`
(extrapolated to LLaVA-665K) and of `LazySupervisedDataset.__getitem__`
(tokenise + decode + anyres tiles) on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir()
    sizes = [(640, 480), (480, 640), (640, 427), (500, 375), (800, 600), (1024, 768), (336, 336)]
    base = {s: Image.effect_noise((s[0] // 4, s[1] // 4), 40).convert("RGB").resize(s) for s in sizes}
    samples = []
    words = "the a cat dog sits on mat red blue image shows two people near table with food".split()
    for i in range(n):
        rounds = [(" ".join(rng.choices(words, k=rng.randint(5, 20))) + "?",
                   " ".join(rng.choices(words, k=rng.randint(10, 120))) + ".") for _ in range(rng.randint(1, 3))]
        conv = []
        for q, a in rounds:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        sample = {"id": str(i), "conversations": conv}
        if i % 10:
            name = f"{i:06d}.jpg"
            base[rng.choice(sizes)].save(images / name, quality=85)
            sample["image"] = name
            conv[0]["value"] = "<image>\n" + conv[0]["value"]
        samples.append(sample)
    path = root / "data.json"
    path.write_text(json.dumps(samples))
    tower = root / "clip336"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "image_size": 336,
                                                   "patch_size": 14, "hidden_size": 1024}))
    return root


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=10000, help="synthetic samples (90%% with an image)")
    p.add_argument("--getitem", type=int, default=300, help="samples loaded through __getitem__")
    p.add_argument("--headers_only", action="store_true", help="check without decoding pixels (the check's --headers_only)")
    args = p.parse_args()

    import torch
    from transformers import CLIPImageProcessorPil

    from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
    from llava.data import check
    from llava.data.dataset import LazySupervisedDataset
    from llava.demo.tiny import load_vendored_tokenizer, vendored_tokenizer_dir

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = build(Path(tmp), args.samples)
        print(f"built {args.samples} samples in {time.perf_counter() - t0:.1f} s")
        argv = ["--data_path", str(root / "data.json"), "--image_folder", str(root / "images"),
                "--model_name_or_path", str(vendored_tokenizer_dir("llama2")), "--version", "v1",
                "--model_max_length", "4096", "--vision_tower", str(root / "clip336"), "--no_progress",
                "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad"]
        argv += ["--headers_only"] if args.headers_only else []
        t0 = time.perf_counter()
        check.main(argv)
        dt = time.perf_counter() - t0
        print(f"check: {args.samples / dt:.0f} samples/s ({dt:.1f} s incl. tokenizer load); "
              f"665K samples -> {665_000 / (args.samples / dt) / 60:.1f} min")

        tok = load_vendored_tokenizer("llama2")
        processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        layout = ImageLayout(336, 14, to_pinpoint_tuple(default_grid_pinpoints(336)), "anyres", "spatial_unpad")
        ds = LazySupervisedDataset(str(root / "data.json"), tok, version="v1", max_length=4096, layout=layout,
                                   image_processor=processor, image_folder=str(root / "images"))
        n = min(args.getitem, len(ds))
        ds[0]
        t0 = time.perf_counter()
        tiles = sum(sum(x.shape[0] for x in ds[i]["images"]) for i in range(n))
        dt = time.perf_counter() - t0
        print(f"__getitem__: {n / dt:.1f} samples/s on one core ({1000 * dt / n:.1f} ms/sample, "
              f"{tiles / n:.1f} tiles of 336 px per sample); cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
