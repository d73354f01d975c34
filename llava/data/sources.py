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

import yaml

from llava.data.problems import DataProblem, ProblemLog

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


def read_json_records(path, problems: ProblemLog | None = None) -> list:
    """The list of samples in a `.json` (one list) or `.jsonl` (one object per line) file.

    A decode error names the file and line. In a JSONL file one bad line
    (invalid JSON, not UTF-8) is a `bad_json_line` problem added to
    `problems` (skipped and counted, or raised in strict mode); without
    `problems` it raises. A bad `.json` file always raises: nothing in it can be trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, problems)
    data = path.read_bytes()
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line, column = _line_and_column(data, err.start)
        raise ValueError(f"{path}:{line}:{column}: not UTF-8 (byte 0x{data[err.start]:02x})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(items).__name__}")
    return items


def _read_jsonl(path: Path, problems: ProblemLog | None) -> list:
    items = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
                if text.strip():
                    items.append(json.loads(text))
            except UnicodeDecodeError as err:
                _bad_line(path, number, f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", problems)
            except json.JSONDecodeError as err:
                _bad_line(path, number, f"invalid JSON: {err.msg} (column {err.colno})", problems)
    return items


def _bad_line(path: Path, number: int, reason: str, problems: ProblemLog | None) -> None:
    where = f"{path}:{number}"
    if problems is None:
        raise ValueError(f"{where}: {reason}")
    problems.add(DataProblem("bad_json_line", f"{where}: {reason}", f"{path.name}:{number}"))


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte `offset` in `data`."""
    return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


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


def load_records(data_path, image_folder=None, problems: ProblemLog | None = None) -> list[Record]:
    """All samples named by `data_path` (.json, .jsonl or a .yaml/.yml mixture).

    `problems` receives the bad JSONL lines (see `read_json_records`).
    """
    path = Path(data_path)
    if path.suffix not in (".yaml", ".yml"):
        return _records(enumerate(read_json_records(path, problems)), path.name, image_folder)
    out = []
    for number, entry in enumerate(_mixture_entries(path), start=1):
        json_path = _json_path(path, entry)
        try:
            items = list(enumerate(read_json_records(json_path, problems)))
        except ValueError as err:
            raise ValueError(f"{err} (in mixture {path}, entry {number})") from None
        items = sample_subset(items, entry.get("sampling_strategy", "all"))
        out.extend(_records(items, json_path.name, entry.get("image_folder", image_folder)))
    return out


def data_files(data_path) -> list[Path]:
    """Every file whose content `load_records(data_path)` reads: the mixture file and its JSON files."""
    path = Path(data_path)
    if path.suffix not in (".yaml", ".yml"):
        return [path]
    return [path] + [_json_path(path, entry) for entry in _mixture_entries(path)]


def _json_path(mixture: Path, entry: dict) -> Path:
    """An entry's json_path: as written, else relative to the mixture file's folder."""
    json_path = Path(entry["json_path"])
    if not json_path.is_absolute() and not json_path.exists():
        json_path = mixture.parent / json_path
    return json_path


def _mixture_entries(path: Path) -> list[dict]:
    """The `datasets:` entries of a YAML mixture, each checked to have a json_path."""
    if not path.is_file():
        raise FileNotFoundError(f"data mixture {path} does not exist")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a 'datasets:' list of entries with json_path")
    for entry in entries:
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise ValueError(f"{path}: every datasets entry needs a json_path, got {entry!r}")
    return entries
