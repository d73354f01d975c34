"""Preflight check of a training dataset, before any GPU is booked.

    python -m llava.data.check --data_path mix665k.json --image_folder ./data \\
        --model_name_or_path ./vicuna-7b --version v1 --model_max_length 4096 \\
        --vision_tower ./clip-vit-large-patch14-336 --image_aspect_ratio anyres

It runs exactly the pass the training dataset runs at start
(`lengths.scan_records`: image headers only, batched tokenisation, on every
core) and writes the same scan cache (`--data_cache_dir`), so training on a
checked dataset starts without scanning again. It
reports the problems per kind with the first sample ids, the token-length
distribution and the share over the limit. `--strict` exits non-zero on any problem.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from llava.anyres import (
    ImageLayout,
    normalize_aspect_ratio,
    parse_grid_pinpoints,
    to_pinpoint_tuple,
)
from llava.vision_config import read_vision_config
from llava.data.parallel_scan import ScanRequest, load_or_scan
from llava.data.problems import PROBLEM_KINDS, ProblemLog


def layout_from_args(args) -> ImageLayout | None:
    """The image layout from --vision_tower's folder, else from a LLaVA checkpoint's config; None if neither."""
    if args.vision_tower:
        vision = read_vision_config(args.vision_tower)
        tile = int(vision["image_size"])
        return ImageLayout(
            tile_size=tile,
            patch_size=int(vision["patch_size"]),
            grid_pinpoints=to_pinpoint_tuple(parse_grid_pinpoints(args.image_grid_pinpoints, tile)),
            aspect_ratio=normalize_aspect_ratio(args.image_aspect_ratio),
            merge_type=args.mm_patch_merge_type,
            select_feature=args.mm_vision_select_feature,
        )
    config_path = Path(args.model_name_or_path) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("mm_vision_config"):
            return ImageLayout.from_config(SimpleNamespace(**config))
    return None


def percentile(sorted_values, q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def report(n_records, entries, problems, all_lengths, max_length, seconds) -> str:
    """The human-readable summary printed at the end."""
    lengths = sorted(all_lengths)
    over = sum(1 for x in lengths if x > max_length)
    lines = [
        f"samples: {n_records}, usable: {len(entries)}, skipped: {problems.total} "
        f"({n_records / max(seconds, 1e-9):.0f} samples/s, {seconds:.1f} s)",
        f"token length: min {lengths[0] if lengths else 0}, median {percentile(lengths, 50)}, "
        f"p95 {percentile(lengths, 95)}, max {lengths[-1] if lengths else 0}; "
        f"over model_max_length {max_length}: {over} ({100 * over / max(len(lengths), 1):.2f}%)",
        f"truncated text-only samples: {int(entries.truncated.sum())}",
        f"with images: {int(entries.has_images.sum())}, text-only: {int((~entries.has_images).sum())}",
    ]
    for kind, meaning in PROBLEM_KINDS.items():
        if problems.counts[kind]:
            lines.append(f"  {kind}: {problems.counts[kind]} ({meaning}); first ids: {problems.examples[kind]}")
    lines.append(problems.summary(kept=len(entries)))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_path", required=True, help="LLaVA .json list, .jsonl, or .yaml mixture")
    p.add_argument("--image_folder", default=None, help="folder that relative image paths are joined to")
    p.add_argument("--model_name_or_path", required=True, help="local folder with the LLM's tokenizer")
    p.add_argument("--version", default="v1", help="conversation template (LLaVA's --version)")
    p.add_argument("--model_max_length", type=int, default=None, help="sequence limit (default: tokenizer's)")
    p.add_argument("--vision_tower", default=None, help="local CLIP/SigLIP folder: tile and patch size")
    p.add_argument("--image_aspect_ratio", default="anyres", help="anyres, pad or square")
    p.add_argument("--image_grid_pinpoints", default=None, help="anyres grids; default LLaVA-NeXT's five")
    p.add_argument("--mm_patch_merge_type", default="spatial_unpad", help="flat, spatial or spatial_unpad")
    p.add_argument("--mm_vision_select_feature", default="patch", help="patch or cls_patch")
    p.add_argument("--workers", type=int, default=None, help="processes scanning (default: every core)")
    p.add_argument("--data_cache_dir", default=None,
                   help="scan cache folder, as train.py's --data_cache_dir (default: $LLAVA_DATA_CACHE_DIR, else "
                   "~/.cache/llava-next/data; 'none': no cache)")
    p.add_argument("--require_images", action="store_true",
                   help="check for a frozen-LLM stage (pretrain): text-only samples are problems, as train.py counts them")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any problem")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    max_length = args.model_max_length or tokenizer.model_max_length
    if not max_length or max_length > 10**8:
        print("error: pass --model_max_length (the tokenizer sets no real limit)", file=sys.stderr)
        return 2
    layout = layout_from_args(args)
    started = time.perf_counter()
    request = ScanRequest(args.data_path, args.image_folder, tokenizer, args.version, layout, max_length,
                          require_images=args.require_images)
    try:
        scan = load_or_scan(request, cache_dir=args.data_cache_dir, processes=args.workers,
                            progress=not args.no_progress)
    except ValueError as err:
        if layout is None and "no image layout" in str(err):
            print("error: the data has images; pass --vision_tower (or a LLaVA checkpoint)", file=sys.stderr)
            return 2
        raise
    problems = ProblemLog(strict=False)
    scan.replay(problems)
    print(report(scan.n_records, scan.entries, problems, scan.all_lengths.tolist(), max_length,
                 time.perf_counter() - started))
    return 1 if args.strict and problems.total else 0


if __name__ == "__main__":
    sys.exit(main())
