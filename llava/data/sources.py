"""Reading LLaVA data files: a JSON list, JSONL, or LLaVA-NeXT's YAML mixture.

A YAML mixture looks like::

    datasets:
      - json_path: /data/llava_v1_5_mix665k.json
        sampling_strategy: all          # all | first:N | end:N | random:N, N may be "10%"
      - json_path: /data/extra.jsonl
        sampling_strategy: random:5000
        image_folder: /data/extra_images   # optional, overrides --image_folder

Every sample comes back as a `Record`: the raw dict, its id (the sample's
`id` field, else `file:index`) and the image folder its paths are relative to.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

RANDOM_SEED = 0
"""Seed of `random:N` sampling, so every rank and every restart draws the same subset."""


@dataclass
class Record:
    """One raw sample with where it came from."""

    sample: dict
    """The sample as read (`conversations`, optional `image`, `id`)."""
    sample_id: str
    """Its `id` field, or `file:index` when it has none; used in every error message."""
    image_folder: str | None
    """Folder that relative image paths are joined to (None: paths used as given)."""


def read_json_records(path) -> list:
    """The list of samples in a `.json` (one list) or `.jsonl` (one object per line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    return data


def sample_subset(items: list, strategy: str, seed: int = RANDOM_SEED) -> list:
    """Apply LLaVA-NeXT's `sampling_strategy` to a list: all, first:N, end:N, random:N (N or N%)."""
    strategy = (strategy or "all").strip()
    if strategy == "all":
        return items
    how, _, amount = strategy.partition(":")
    if how not in ("first", "end", "random") or not amount:
        raise ValueError(f"sampling_strategy {strategy!r}: expected all, first:N, end:N or random:N")
    amount = amount.strip()
    try:
        count = math.ceil(float(amount[:-1]) * len(items) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        raise ValueError(f"sampling_strategy {strategy!r}: {amount!r} is not a count or a percentage") from None
    if count < 0:
        raise ValueError(f"sampling_strategy {strategy!r}: negative count")
    count = min(count, len(items))
    if how == "first":
        return items[:count]
    if how == "end":
        return items[len(items) - count :] if count else []
    picked = sorted(random.Random(seed).sample(range(len(items)), count))
    return [items[i] for i in picked]


def _records(items, source: str, image_folder) -> list[Record]:
    out = []
    for index, sample in items:
        sid = sample.get("id") if isinstance(sample, dict) else None
        out.append(Record(sample, str(sid) if sid is not None else f"{source}:{index}", image_folder))
    return out


def load_records(data_path, image_folder=None) -> list[Record]:
    """All samples named by `data_path` (.json, .jsonl or a .yaml/.yml mixture)."""
    path = Path(data_path)
    if path.suffix in (".yaml", ".yml"):
        out = []
        for json_path, entry in _mixture(path):
            items = list(enumerate(read_json_records(json_path)))
            items = sample_subset(items, entry.get("sampling_strategy", "all"))
            out.extend(_records(items, json_path.name, entry.get("image_folder", image_folder)))
        return out
    return _records(enumerate(read_json_records(path)), path.name, image_folder)


def data_files(data_path) -> list[Path]:
    """Every file whose content `load_records(data_path)` depends on: the mixture file and its JSON files."""
    path = Path(data_path)
    if path.suffix in (".yaml", ".yml"):
        return [path] + [json_path for json_path, _ in _mixture(path)]
    return [path]


def _mixture(path: Path) -> list[tuple[Path, dict]]:
    """(resolved json_path, entry) for each entry of a YAML mixture."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"data mixture {path} does not exist")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a 'datasets:' list of entries with json_path")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise ValueError(f"{path}: every datasets entry needs a json_path, got {entry!r}")
        json_path = Path(entry["json_path"])
        if not json_path.is_absolute() and not json_path.exists():
            json_path = path.parent / json_path
        out.append((json_path, entry))
    return out
