"""The one pass over a dataset that the training dataset and the preflight check share.

For every record it normalises the '<image>' markers, reads the image headers
(sizes only; the preflight check also decodes the pixels), tokenises the conversation in large batches and
computes the exact sequence length the model will see:

    text tokens (one IMAGE_TOKEN_INDEX per image) + sum(layout.num_tokens(hw) - 1)

Problems are reported to a `ProblemLog` (skip and count, or raise in strict
mode); the survivors come back as `ScanEntry` objects. The pass is four
phases with plain inputs and outputs (`scan_records` lists them), so each can
be reused or cached on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.data.headers import read_headers
from llava.data.preprocess import USER_NAMES, conversation_segments, encode_segments
from llava.data.problems import DataProblem, ProblemLog
from llava.data.sources import Record

BATCH = 512
"""Conversations per tokenizer call: large enough for the Rust tokenizer's batching to pay off."""


@dataclass
class Prepared:
    """A record made ready to tokenise: turns with normalised markers and resolved image paths."""

    turns: list
    """LLaVA turns (copies; the record is never modified)."""
    image_paths: list = field(default_factory=list)
    """Absolute or image_folder-relative paths, in marker order."""


@dataclass
class ScanEntry:
    """A sample that passed every check."""

    index: int
    """Position in the record list."""
    image_paths: tuple
    """Its images, in marker order."""
    image_hw: tuple
    """(height, width) of each image, from the header."""
    length: int
    """Exact sequence length after the image splice (after truncation for text-only samples)."""
    truncated: bool = False
    """A text-only sample cut at model_max_length."""


def prepare_sample(record: Record) -> Prepared:
    """Check the record's shape, resolve image paths and normalise '<image>' markers (LLaVA's rules).

    Raises `DataProblem` (malformed, image_token_mismatch).
    """
    sample = record.sample
    if not isinstance(sample, dict) or not isinstance(sample.get("conversations"), list):
        raise DataProblem("malformed", "no 'conversations' list", record.sample_id)
    turns = copy_turns(sample["conversations"], record.sample_id)
    images = image_list(sample.get("image"), record.sample_id)
    place_markers(turns, len(images), record.sample_id)
    folder = record.image_folder
    paths = [p if os.path.isabs(p) or not folder else os.path.join(folder, p) for p in images]
    return Prepared(turns, paths)


def copy_turns(conversations: list, sample_id) -> list[dict]:
    """Copies of the turns (the record is never modified), each checked to hold a string 'value'."""
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataProblem("malformed", f"turn {i} is not a dict with a string 'value'", sample_id)
        turns.append(dict(turn))
    return turns


def image_list(images, sample_id) -> list[str]:
    """The sample's 'image' field as a list of paths (absent: none; one string: one)."""
    images = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DataProblem("malformed", f"'image' must be a path or a list of paths, got {images!r}", sample_id)
    return images


def place_markers(turns: list[dict], n_images: int, sample_id) -> None:
    """Normalise '<image>' markers in place, as LLaVA does.

    A sample with images but no marker gets one per image at the start of the
    first human turn; a turn holding exactly one marker gets it moved to its
    start, followed by a newline. Marker and image counts must then agree.
    """
    markers = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in turns)
    if n_images and markers == 0:
        first = next((t for t in turns if str(t.get("from", t.get("role", ""))).lower() in USER_NAMES), None)
        if first is None:
            raise DataProblem("malformed", "images but no human turn to put '<image>' in", sample_id)
        first["value"] = (DEFAULT_IMAGE_TOKEN + "\n") * n_images + first["value"]
    elif markers != n_images:
        raise DataProblem("image_token_mismatch", f"{markers} '<image>' markers for {n_images} images", sample_id)
    for turn in turns:
        text = turn["value"]
        if text.count(DEFAULT_IMAGE_TOKEN) == 1 and not text.startswith(DEFAULT_IMAGE_TOKEN):
            turn["value"] = DEFAULT_IMAGE_TOKEN + "\n" + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()


def image_tokens(layout, image_hw) -> int:
    """Extra sequence positions the images add beyond their one marker each."""
    if image_hw and layout is None:
        raise ValueError("the dataset has images but no image layout (no vision tower configured)")
    return sum(layout.num_tokens(hw) - 1 for hw in image_hw)


def fit_length(ids, labels, extra: int, max_length: int, has_images: bool, sample_id):
    """Final (ids, labels, truncated) under max_length, or a DataProblem (all_masked, over_length)."""
    if all(label == IGNORE_INDEX for label in labels):
        raise DataProblem("all_masked", "no supervised token (no assistant text to learn)", sample_id)
    total = len(ids) + extra
    if total <= max_length:
        return ids, labels, False
    if has_images:
        raise DataProblem("over_length", f"{total} tokens with images > model_max_length {max_length}", sample_id)
    labels = labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataProblem("over_length", f"{total} tokens > {max_length} and no reply before the cut", sample_id)
    return ids[:max_length], labels, True


def scan_records(records, tokenizer, version, layout, max_length, problems: ProblemLog,
                 workers=None, progress: bool = False, all_lengths: list | None = None,
                 require_images: bool = False, decode: bool = False) -> list[ScanEntry]:
    """Check and measure every record; returns the entries to train on.

    Four phases, each a function of its own: `prepare_records` (shape,
    markers, paths) -> `read_image_sizes` (headers; pixels too with `decode`)
    -> `tokenize_records` (batched) -> `fit_records` (exact lengths, limits).
    `all_lengths`, when given, receives the untruncated length of every sample
    that could be tokenised (over-length ones included), for the check's report.
    `require_images` (the LLM is frozen) makes text-only samples a problem: a
    batch of them would reach no trainable weight and crash `backward()`.
    """
    prepared = prepare_records(records, problems)
    sizes = read_image_sizes(records, prepared, problems, workers, progress, decode)
    with tqdm(total=len(sizes), desc="tokenize", unit="sample", disable=not progress) as bar:
        tokenized = tokenize_records(records, prepared, sizes, tokenizer, version, problems, require_images, bar)
        return fit_records(records, prepared, sizes, tokenized, layout, max_length, problems, all_lengths)


def prepare_records(records, problems: ProblemLog) -> dict[int, Prepared]:
    """Phase 1: `{index: Prepared}` for every record whose shape and markers are fine."""
    prepared = {}
    for i, record in enumerate(records):
        try:
            prepared[i] = prepare_sample(record)
        except DataProblem as problem:
            problems.add(problem.with_id(record.sample_id))
    return prepared


def read_image_sizes(records, prepared: dict, problems: ProblemLog, workers=None, progress: bool = False,
                     decode: bool = False) -> dict[int, tuple]:
    """Phase 2: `{index: ((height, width), ...)}` for the prepared samples whose images all read.

    Each distinct path is read once (headers only, or decoded with `decode`);
    a sample with an unreadable image is a problem of that image's kind.
    """
    paths = [p for prep in prepared.values() for p in prep.image_paths]
    with tqdm(total=len(set(paths)), desc="image headers", unit="img", disable=not progress) as bar:
        headers = read_headers(paths, workers=workers, progress=bar.update, decode=decode)
    sizes = {}
    for i, prep in prepared.items():
        bad = next((p for p in prep.image_paths if isinstance(headers[p], str)), None)
        if bad is not None:
            problems.add(DataProblem(headers[bad], f"image {bad}", records[i].sample_id))
        else:
            sizes[i] = tuple(headers[p] for p in prep.image_paths)
    return sizes


def tokenize_records(records, prepared: dict, indices, tokenizer, version, problems: ProblemLog,
                     require_images: bool = False, bar=None):
    """Phase 3: yields `(index, ids, labels)` for `indices`, `BATCH` conversations per tokenizer call.

    A conversation the template rejects (no reply, unknown role), or a
    text-only one under `require_images`, is a problem instead.
    """
    order = list(indices)
    for start in range(0, len(order), BATCH):
        block, segments = [], []
        for i in order[start : start + BATCH]:
            try:
                rendered = conversation_segments(prepared[i].turns, version)
                if require_images and not prepared[i].image_paths:  # after the conversation's own checks
                    raise DataProblem("text_only_frozen_llm", "no image, and only the projector trains")
            except DataProblem as problem:
                problems.add(problem.with_id(records[i].sample_id))
                continue
            segments.append(rendered)
            block.append(i)
        for i, (ids, labels) in zip(block, encode_segments(segments, tokenizer, has_image=True)):
            yield i, ids, labels
        if bar is not None:
            bar.update(len(order[start : start + BATCH]))


def fit_records(records, prepared: dict, sizes: dict, tokenized, layout, max_length, problems: ProblemLog,
                all_lengths: list | None = None) -> list[ScanEntry]:
    """Phase 4: the exact length of each tokenised sample under `max_length`, as `ScanEntry`s."""
    entries = []
    for i, ids, labels in tokenized:
        hw = sizes[i]
        extra = image_tokens(layout, hw)
        if all_lengths is not None:
            all_lengths.append(len(ids) + extra)
        try:
            ids, _, cut = fit_length(ids, labels, extra, max_length, bool(hw), records[i].sample_id)
        except DataProblem as problem:
            problems.add(problem)
            continue
        entries.append(ScanEntry(i, tuple(prepared[i].image_paths), hw, len(ids) + extra, cut))
    return entries
