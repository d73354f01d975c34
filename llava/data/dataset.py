"""LLaVA's supervised dataset: checked once at start, then lazy per sample.

At construction every record is checked and measured (`lengths.scan_records`:
image headers only, batched tokenisation), so bad samples are skipped and
counted before training starts, and the exact length of every kept sample is
known for `group_by_modality_length`. That scan runs once per job and is
cached on disk (`parallel_scan.load_or_scan`); the records are held as JSON
bytes in one buffer (`record_store`), decoded per sample. `__getitem__` then tokenises one sample
and decodes its pixels. A pixel decode failure there (a file whose header was
fine) is logged at once, counted across DataLoader worker processes
(`SharedProblems`), and the sample is replaced by the next good one, so every
rank and every restart sees the same substitution. `log_summary()` reports
both at the end of training.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from llava.anyres import ImageLayout
from llava.constants import DEFAULT_VERSION
from llava.conversation import get_conversation_template
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.lengths import fit_length, image_tokens, prepare_sample
from llava.data.parallel_scan import ScanRequest, load_or_scan
from llava.data.preprocess import conversation_segments, encode_segments
from llava.data.problems import DataProblem, ProblemLog, SharedProblems, is_main_process
from llava.mm_utils import image_tiles
from llava.pixel_recipe import TileRecipe

logger = logging.getLogger(__name__)


def resolve_max_length(tokenizer, max_length: int | None = None) -> int:
    """`max_length`, else the tokenizer's `model_max_length` (LLaVA's `--model_max_length` sets both)."""
    value = max_length or tokenizer.model_max_length
    if not value or value > 10**8:
        raise ValueError("model_max_length is not set: pass --model_max_length (the tokenizer has no real limit)")
    return int(value)


class LazySupervisedDataset(Dataset):
    """Samples as `dict(input_ids, labels, images, image_sizes)` (docs/Architecture.md).

    Every input is explicit:
    - `version`: the conversation template (`--version`);
    - `max_length`: the sequence limit (`--model_max_length`);
    - `layout`, `image_processor`: how images become tiles and tokens (None
      for text-only data; image samples then raise);
    - `image_folder`: what relative image paths are joined to;
    - `strict`: raise at the first bad sample instead of skipping and counting;
    - `require_images`: text-only samples are a problem (no LLM weight trains);
    - `cache_dir`: where the scan is cached (`--data_cache_dir`; None: the default folder, "none": no cache).
    """

    def __init__(self, data_path, tokenizer, *, version: str, max_length: int, layout: ImageLayout | None = None,
                 image_processor=None, image_folder: str | None = None, strict: bool = False,
                 require_images: bool = False, cache_dir: str | None = None):
        super().__init__()
        get_conversation_template(version)  # unknown --version fails here, not at step 1
        self.tokenizer, self.version, self.max_length = tokenizer, version, int(max_length)
        self.layout, self.image_processor = layout, image_processor
        self.recipe = _tile_recipe(layout, image_processor)
        self.problems = ProblemLog(strict=strict)
        self.met_in_training = SharedProblems()
        started = time.perf_counter()
        request = ScanRequest(str(data_path), image_folder, tokenizer, version, layout, self.max_length, require_images)
        scan = load_or_scan(request, cache_dir=cache_dir, progress=True)  # only the scanning process draws it
        self.records, self.entries = scan.records, scan.entries  # compact arrays: record_store
        scan.replay(self.problems)  # strict mode raises the first problem here, cold or cached
        entries = self.entries
        if entries.has_images.any() and (layout is None or image_processor is None):
            raise ValueError(f"{data_path} has image samples but the dataset has no image layout/processor "
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
                if self.problems.strict:
                    raise
                self.met_in_training.add(problem)  # visible to the main process, also from a worker
                logger.warning("%s; using sample %d instead", problem, (index + 1) % len(self.entries))
        raise RuntimeError(f"every sample failed to load: {self.summary()}")

    def summary(self) -> str:
        """One line: the samples skipped at start and the problems met while loading since."""
        total = ProblemLog()
        total.absorb(self.problems)
        total.absorb(self.met_in_training.collect())
        return total.summary(kept=len(self.entries))

    def log_summary(self, log=logger) -> str:
        """The end-of-run data summary, at WARNING (shown by default) on rank 0; returns the line.

        Counts every kind skipped at start plus the decode errors met in
        `__getitem__` by this rank's processes (main and DataLoader workers).
        Other ranks report their own training-time problems, if any, the same way.
        """
        line = self.summary()
        met = self.met_in_training.collect()
        if is_main_process():
            log.warning("%s (at the end of training; replaced while loading: %d)", line, met.total)
        elif met.total:
            log.warning("this rank replaced %d samples while loading: %s", met.total, met.summary())
        return line

    def _load(self, index: int) -> dict:
        record = self.records[int(self.entries.index[index])]
        image_hw = self.entries.image_hw(index)
        prepared = prepare_sample(record)
        segments = conversation_segments(prepared.turns, self.version)
        ids, labels = encode_segments([segments], self.tokenizer, has_image=True)[0]
        extra = image_tokens(self.layout, image_hw)
        ids, labels, _ = fit_length(ids, labels, extra, self.max_length, bool(image_hw), record.sample_id)
        images = [self._pixels(path, hw, record.sample_id) for path, hw in zip(prepared.image_paths, image_hw)]
        return dict(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            images=images,
            image_sizes=[(w, h) for h, w in image_hw],  # PIL (width, height), as LLaVA
        )

    def _pixels(self, path: str, scanned_hw: tuple[int, int], sample_id) -> torch.Tensor:
        """`[tiles, 3, s, s]` for one image, by the per-image function `process_images` also uses.

        The image must still have the size the scan measured: the token count
        and the unpadding follow that size, and the scan cache keys on the data
        files, not on the images.
        """
        try:
            image = Image.open(path)
            image.load()  # decodes the pixels; the processors convert to RGB themselves
        except Exception as err:  # truncated or otherwise undecodable pixels
            raise DataProblem("decode_error", f"image {path}: {type(err).__name__}: {err}", sample_id) from None
        if (image.height, image.width) != tuple(scanned_hw):
            raise ValueError(f"image {path} (sample {sample_id}) is {image.height}x{image.width} (h x w) now but was "
                             f"{scanned_hw[0]}x{scanned_hw[1]} when the data was scanned: the scan cache is stale; "
                             "delete it (--data_cache_dir) or touch the data file")
        layout = self.layout
        pixels = image_tiles(image, self.image_processor, self.recipe, layout.aspect_ratio, layout.grid_pinpoints)
        if pixels.ndim != 4 or (pixels.shape[1], pixels.shape[2]) != (3, layout.tile_size):
            raise ValueError(f"image processor produced {tuple(pixels.shape)} for {path}; expected "
                             f"[tiles, 3, {layout.tile_size}, {layout.tile_size}] (does it match the vision tower?)")
        return pixels


def _tile_recipe(layout: ImageLayout | None, image_processor) -> TileRecipe | None:
    """The anyres tiling recipe, built once per dataset; its tile must be the layout's."""
    if layout is None or image_processor is None or not layout.is_anyres:
        return None
    recipe = TileRecipe(image_processor)
    if recipe.tile != layout.tile_size:
        raise ValueError(f"the image processor makes {recipe.tile}-px tiles but the vision tower takes "
                         f"{layout.tile_size}-px ones (does the processor match the tower?)")
    return recipe


def make_supervised_data_module(tokenizer, data_args, *, version: str = DEFAULT_VERSION,
                                layout: ImageLayout | None = None, image_processor=None,
                                model_max_length: int | None = None, require_images: bool = False) -> dict:
    """LLaVA's entry point: the training dataset and its collator (no eval set).

    `data_args` gives what the user passed (`data_path`, `image_folder`,
    `strict_data`); what the model decides comes as arguments, never as
    attributes written onto `data_args`. `model_max_length` defaults to the tokenizer's,
    `version` to LLaVA's `--version` default, so LLaVA's own two-argument call works on text-only data.
    """
    dataset = LazySupervisedDataset(
        data_args.data_path, tokenizer, version=version, max_length=resolve_max_length(tokenizer, model_max_length),
        layout=layout, image_processor=image_processor, image_folder=data_args.image_folder,
        strict=data_args.strict_data, require_images=require_images,
        cache_dir=getattr(data_args, "data_cache_dir", None),  # LLaVA's own DataArguments have no such field
    )
    return dict(train_dataset=dataset, eval_dataset=None, data_collator=DataCollatorForSupervisedDataset(tokenizer))
