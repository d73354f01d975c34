"""LLaVA's supervised dataset: checked once at start, then lazy per sample.

At construction every record is checked and measured (`lengths.scan_records`:
image headers only, batched tokenisation), so bad samples are skipped and
counted before training starts, and the exact length of every kept sample is
known for `group_by_modality_length`. That scan runs once per job and is
cached on disk (`parallel_scan.load_or_scan`); the records are held as JSON
bytes in one buffer (`record_store`), decoded per sample. `__getitem__` then tokenises one sample
and decodes its pixels. A pixel decode failure there (a file whose header was
fine) is counted and the sample is replaced by the next good one, so every
rank and every restart sees the same substitution.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from llava.conversation import get_conversation_template
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.lengths import fit_length, image_tokens, prepare_sample
from llava.data.parallel_scan import ScanRequest, load_or_scan
from llava.data.preprocess import conversation_segments, encode_segments
from llava.data.problems import DataProblem, ProblemLog, is_main_process
from llava.mm_utils import process_images

logger = logging.getLogger(__name__)


def resolve_max_length(tokenizer, data_args) -> int:
    """`data_args.model_max_length`, else the tokenizer's (LLaVA's `--model_max_length`)."""
    value = getattr(data_args, "model_max_length", None) or getattr(tokenizer, "model_max_length", None)
    if not value or value > 10**8:
        raise ValueError("model_max_length is not set: pass --model_max_length (the tokenizer has no real limit)")
    return int(value)


class LazySupervisedDataset(Dataset):
    """Samples as `dict(input_ids, labels, images, image_sizes)` (docs/Architecture.md)."""

    def __init__(self, data_path, tokenizer, data_args):
        super().__init__()
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.version = getattr(data_args, "version", None) or "v1"
        get_conversation_template(self.version)  # unknown --version fails here, not at step 1
        self.layout = getattr(data_args, "image_layout", None)
        self.max_length = resolve_max_length(tokenizer, data_args)
        self.problems = ProblemLog(strict=bool(getattr(data_args, "strict_data", False)))
        started = time.perf_counter()
        request = ScanRequest(data_path, getattr(data_args, "image_folder", None), tokenizer, self.version,
                              self.layout, self.max_length, bool(getattr(data_args, "require_images", False)))
        scan = load_or_scan(request, cache_dir=getattr(data_args, "data_cache_dir", None), progress=is_main_process())
        self.records, self.entries = scan.records, scan.entries  # compact: record_store
        scan.replay(self.problems)  # strict mode raises the first problem here, cold or cached
        entries = self.entries
        if entries.has_images.any() and (
            self.layout is None or getattr(data_args, "image_processor", None) is None
        ):
            raise ValueError(f"{data_path} has image samples but data_args has no image_layout/image_processor "
                             "(train with --vision_tower, or use text-only data)")
        if is_main_process():
            logger.info("data: %d of %d samples checked in %.1f s", len(entries), len(self.records),
                        time.perf_counter() - started)
        self.problems.log(kept=len(entries))
        if not entries:
            raise ValueError(f"no usable sample in {data_path}: {self.problems.summary(kept=0)}")

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def lengths(self) -> list[int]:
        """Exact sequence length of each sample (image tokens included)."""
        return self.entries.length.tolist()

    @property
    def modality_lengths(self) -> list[int]:
        """Length, positive for samples with images and negative for text-only ones (LLaVA's convention)."""
        return np.where(self.entries.has_images, self.entries.length, -self.entries.length).tolist()

    def __getitem__(self, i: int) -> dict:
        for step in range(len(self.entries)):
            index = (i + step) % len(self.entries)
            try:
                return self._load(index)
            except DataProblem as problem:
                self.problems.add(problem)  # raises in strict mode
                logger.warning("%s; using sample %d instead", problem, (index + 1) % len(self.entries))
        raise RuntimeError(f"every sample failed to load: {self.problems.summary()}")

    def _load(self, index: int) -> dict:
        record = self.records[int(self.entries.index[index])]
        image_hw = self.entries.image_hw(index)
        prepared = prepare_sample(record)
        segments = conversation_segments(prepared.turns, self.version)
        ids, labels = encode_segments([segments], self.tokenizer, has_image=True)[0]
        extra = image_tokens(self.layout, image_hw)
        ids, labels, _ = fit_length(ids, labels, extra, self.max_length, bool(image_hw), record.sample_id)
        images = [self._pixels(path, record.sample_id) for path in prepared.image_paths]
        return dict(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            images=images,
            image_sizes=[(w, h) for h, w in image_hw],  # PIL (width, height), as LLaVA
        )

    def _pixels(self, path: str, sample_id) -> torch.Tensor:
        """`[tiles, 3, s, s]` for one image, as `process_images` makes it for this layout."""
        try:
            image = Image.open(path)
            image.load()  # decodes the pixels; the processors convert to RGB themselves
        except Exception as err:  # truncated or otherwise undecodable pixels
            raise DataProblem("decode_error", f"image {path}: {type(err).__name__}: {err}", sample_id) from None
        layout = self.layout
        cfg = SimpleNamespace(image_aspect_ratio=layout.aspect_ratio,
                              image_grid_pinpoints=[list(p) for p in layout.grid_pinpoints])
        pixels = process_images([image], self.data_args.image_processor, cfg)
        pixels = pixels[0] if isinstance(pixels, list) or pixels.ndim == 5 else pixels  # (tiles, 3, s, s)
        if pixels.ndim != 4 or (pixels.shape[1], pixels.shape[2]) != (3, layout.tile_size):
            raise ValueError(f"image processor produced {tuple(pixels.shape)} for {path}; expected "
                             f"[tiles, 3, {layout.tile_size}, {layout.tile_size}] (does it match the vision tower?)")
        return pixels


def make_supervised_data_module(tokenizer, data_args) -> dict:
    """LLaVA's entry point: the training dataset and its collator (no eval set)."""
    dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args)
    return dict(train_dataset=dataset, eval_dataset=None, data_collator=DataCollatorForSupervisedDataset(tokenizer))
