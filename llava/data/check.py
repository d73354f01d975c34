"""Preflight check of a training dataset, before any GPU is booked.

    python -m llava.data.check --data_path mix665k.json --image_folder ./data \\
        --model_name_or_path ./vicuna-7b --version v1 --model_max_length 4096 \\
        --vision_tower ./clip-vit-large-patch14-336 --image_aspect_ratio anyres \\
        --mm_patch_merge_type spatial_unpad

It runs the pass the training dataset runs at start (`lengths.scan_records`:
batched tokenisation, the same image layout, `llava.vision_config.layout_from_args`),
with train.py's defaults for every shared flag, on every core, and writes the
same scan cache (`--data_cache_dir`), so training on a checked dataset starts
without scanning again. Then it decodes every kept sample's images
(`--headers_only` skips that), which training does only when it loads a
sample; those decode errors are reported here, not written into the cache.
It reports the problems per kind with the first sample ids, the token-length distribution and the share over the limit. `--strict` exits
non-zero on any problem; an empty dataset always fails, as training would.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer

from llava.anyres import DEFAULT_ASPECT_RATIO, DEFAULT_MERGE_TYPE, DEFAULT_SELECT_FEATURE, ImageLayout
from llava.constants import DEFAULT_MODEL_MAX_LENGTH, DEFAULT_VERSION
from llava.conversation import get_conversation_template
from llava.data.headers import read_headers
from llava.data.lengths import prepare_sample
from llava.data.parallel_scan import ScanRequest, load_or_scan
from llava.data.problems import PROBLEM_KINDS, DataProblem, ProblemLog
from llava.data.record_store import EntryTable
from llava.vision_config import layout_from_args


def check_layout(args) -> ImageLayout | None:
    """The image layout from --vision_tower's folder and the layout flags (as train.py derives it).

    Without --vision_tower, a LLaVA checkpoint's own config; None if neither.
    """
    if args.vision_tower:
        return layout_from_args(args, args)
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
    """The check's flags; the shared ones have train.py's names and defaults (taken from the same constants)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_path", required=True, help="LLaVA .json list, .jsonl, or .yaml mixture")
    p.add_argument("--image_folder", default=None, help="folder that relative image paths are joined to")
    p.add_argument("--model_name_or_path", required=True, help="local folder with the LLM's tokenizer")
    p.add_argument("--version", default=DEFAULT_VERSION, help="conversation template (LLaVA's --version)")
    p.add_argument("--model_max_length", type=int, default=DEFAULT_MODEL_MAX_LENGTH, help="sequence limit")
    p.add_argument("--vision_tower", default=None, help="local CLIP/SigLIP folder: tile and patch size")
    p.add_argument("--image_aspect_ratio", default=DEFAULT_ASPECT_RATIO, help="anyres, pad or square")
    p.add_argument("--image_grid_pinpoints", default=None, help="anyres grids; default LLaVA-NeXT's five")
    p.add_argument("--mm_patch_merge_type", default=DEFAULT_MERGE_TYPE, help="flat, spatial or spatial_unpad")
    p.add_argument("--mm_vision_select_feature", default=DEFAULT_SELECT_FEATURE, help="patch or cls_patch")
    p.add_argument("--workers", type=int, default=None, help="processes scanning (default: every core)")
    p.add_argument("--data_cache_dir", default=None,
                   help="scan cache folder, as train.py's --data_cache_dir (default: $LLAVA_DATA_CACHE_DIR, else "
                   "~/.cache/llava-next/data; 'none': no cache)")
    p.add_argument("--require_images", action="store_true",
                   help="check for a frozen-LLM stage (pretrain): text-only samples are problems, as train.py counts them")
    p.add_argument("--headers_only", action="store_true",
                   help="read image headers only (faster; misses files truncated after a valid header)")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any problem")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


@dataclass
class CheckResult:
    """What one check pass found: the records read, the entries training would keep, every length."""

    n_samples: int
    """Samples in the files (bad JSONL lines included)."""
    entries: EntryTable
    """Each usable sample (`record_store.EntryTable`: iterate for rows with index, length, ...)."""
    problems: ProblemLog
    """Counts and first ids of every problem kind."""
    all_lengths: list
    """Untruncated length of every sample that could be tokenised."""


def run(args) -> CheckResult:
    """The check pass for parsed flags; raises ValueError/OSError for a setup or file error."""
    get_conversation_template(args.version)  # an unknown --version fails here, as in training
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    layout = check_layout(args)
    request = ScanRequest(args.data_path, args.image_folder, tokenizer, args.version, layout, args.model_max_length,
                          require_images=args.require_images)
    try:
        scan = load_or_scan(request, cache_dir=args.data_cache_dir, processes=args.workers,
                            progress=not args.no_progress)
    except ValueError as err:
        if layout is None and "no image layout" in str(err):
            raise ValueError("the data has images; pass --vision_tower (or a LLaVA checkpoint)") from None
        raise
    problems = ProblemLog(strict=False)
    scan.replay(problems)
    entries = scan.entries
    if not args.headers_only:
        entries = entries.subset(decodes(scan, problems, not args.no_progress))
    return CheckResult(scan.n_records + problems.counts["bad_json_line"], entries, problems,
                       scan.all_lengths.tolist())


def main(argv=None) -> int:
    """Exit 0: training can start on this data; 1: an empty dataset, or any problem with --strict; 2: bad setup."""
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        found = run(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(found.n_samples, found.entries, found.problems, found.all_lengths, args.model_max_length,
                 time.perf_counter() - started))
    if not found.entries:
        print("error: no usable sample: training would stop at start", file=sys.stderr)
        return 1
    return 1 if args.strict and found.problems.total else 0


def decodes(scan, problems: ProblemLog, progress: bool):
    """bool per kept sample: all its images decode; a `decode_error` problem for each sample that fails."""
    rows = [int(i) for i in scan.entries.index]
    paths = [prepare_sample(scan.records[row]).image_paths for row in rows]  # one record decoded at a time
    with tqdm(total=len({p for ps in paths for p in ps}), desc="decode images", unit="img",
              disable=not progress) as bar:
        results = read_headers([p for ps in paths for p in ps], progress=bar.update, decode=True)
    ok = np.ones(len(rows), dtype=bool)
    for k, (row, sample_paths) in enumerate(zip(rows, paths)):
        bad = next((p for p in sample_paths if isinstance(results[p], str)), None)
        if bad is not None:
            problems.add(DataProblem(results[bad], f"image {bad}", scan.records.sample_id(row)))
            ok[k] = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
