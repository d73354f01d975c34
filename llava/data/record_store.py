"""Samples and scan results held as a few flat arrays instead of millions of Python objects.

A Python dict per sample costs about 8.5 KiB for a LLaVA conversation, and
every dataloader worker forked from a rank slowly copies those pages because
reading an object writes its reference count. Here each sample is its JSON
text inside one byte buffer, found through an int64 offset array, and decoded
(orjson) only in `__getitem__`. Reading a numpy buffer writes nothing, so
forked workers share the pages; a buffer mapped from the scan cache is also
shared between the ranks of a node through the page cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson

from llava.data.sources import Record


def _encode(sample) -> bytes:
    """JSON bytes of one sample; the standard library for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(sample)
    except TypeError:
        return json.dumps(sample).encode("utf-8")


def _pack(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 buffer, int64 offsets of length len(chunks) + 1) holding the chunks back to back."""
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets


class RecordStore(Sequence):
    """`Record`s kept as JSON bytes: `store[i]` decodes sample i (a fresh dict each time)."""

    def __init__(self, blob, offsets, id_blob, id_offsets, folder_index, folders):
        self.blob, self.offsets = blob, offsets  # uint8 [total bytes], int64 [n + 1]
        self.id_blob, self.id_offsets = id_blob, id_offsets  # uint8 [total id bytes], int64 [n + 1]
        self.folder_index = folder_index  # int32 [n], index into `folders`
        self.folders = list(folders)  # image folders (str or None); a mixture has a few

    @classmethod
    def from_records(cls, records) -> "RecordStore":
        """Encode `Record`s (e.g. from `sources.load_records`), in one pass over any iterable.

        A generator that drops each record after yielding it keeps the peak
        memory at the parsed dicts, not the dicts plus their encoding.
        """
        folders: dict = {}
        index, samples, ids = [], [], []
        for r in records:
            index.append(folders.setdefault(r.image_folder, len(folders)))
            samples.append(_encode(r.sample))
            ids.append(r.sample_id.encode("utf-8"))
        blob, offsets = _pack(samples)
        del samples
        id_blob, id_offsets = _pack(ids)
        return cls(blob, offsets, id_blob, id_offsets, np.array(index, dtype=np.int32), list(folders))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        i %= len(self)
        sample = orjson.loads(memoryview(self.blob[self.offsets[i] : self.offsets[i + 1]]))
        return Record(sample, self.sample_id(i), self.folders[self.folder_index[i]])

    def sample_id(self, i: int) -> str:
        return bytes(self.id_blob[self.id_offsets[i] : self.id_offsets[i + 1]]).decode("utf-8")

    def arrays(self) -> dict:
        """The arrays to write into a cache file (the folders go into its header)."""
        return dict(blob=self.blob, offsets=self.offsets, id_blob=self.id_blob, id_offsets=self.id_offsets,
                    folder_index=self.folder_index)


class EntryRow(NamedTuple):
    """One kept sample, as `EntryTable` rows are iterated."""

    index: int
    length: int
    truncated: bool
    image_hw: tuple


@dataclass
class EntryTable:
    """The scan's verdict on every kept sample, in record order."""

    index: np.ndarray
    """int64 [n]: the sample's position in the `RecordStore` (which also holds the skipped records)."""
    length: np.ndarray
    """int32 [n]: exact sequence length (image tokens included, after truncation of text-only samples)."""
    truncated: np.ndarray
    """bool [n]: a text-only sample cut at model_max_length."""
    hw_offsets: np.ndarray
    """int64 [n + 1]: sample i's images are rows hw_offsets[i]:hw_offsets[i+1] of `hw`."""
    hw: np.ndarray
    """int32 [images, 2]: (height, width) of each image, from its header, in marker order."""

    @classmethod
    def from_entries(cls, entries) -> "EntryTable":
        """From `lengths.ScanEntry` objects."""
        hw = [pair for e in entries for pair in e.image_hw]
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum([len(e.image_hw) for e in entries], out=offsets[1:])
        return cls(np.array([e.index for e in entries], dtype=np.int64),
                   np.array([e.length for e in entries], dtype=np.int32),
                   np.array([e.truncated for e in entries], dtype=bool), offsets,
                   np.array(hw, dtype=np.int32).reshape(len(hw), 2))

    @classmethod
    def concat(cls, tables) -> "EntryTable":
        """One table from several (e.g. one per scanned chunk, indices already global)."""
        tables = [cls.from_entries([])] + list(tables)
        offsets, base = [np.zeros(1, dtype=np.int64)], 0
        for t in tables:
            offsets.append(t.hw_offsets[1:] + base)
            base += int(t.hw_offsets[-1])
        return cls(np.concatenate([t.index for t in tables]), np.concatenate([t.length for t in tables]),
                   np.concatenate([t.truncated for t in tables]), np.concatenate(offsets),
                   np.concatenate([t.hw for t in tables]))

    def __len__(self) -> int:
        return len(self.length)

    def __iter__(self):
        for i in range(len(self)):
            yield EntryRow(int(self.index[i]), int(self.length[i]), bool(self.truncated[i]), self.image_hw(i))

    def subset(self, keep: np.ndarray) -> "EntryTable":
        """The rows where the bool mask `keep` is True."""
        counts = np.diff(self.hw_offsets)
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(counts[keep], out=offsets[1:])
        return EntryTable(self.index[keep], self.length[keep], self.truncated[keep], offsets,
                          self.hw[np.repeat(keep, counts)])  # an image row is kept with its sample

    def image_hw(self, i: int) -> tuple:
        """((height, width), ...) of sample i's images."""
        return tuple((int(h), int(w)) for h, w in self.hw[self.hw_offsets[i] : self.hw_offsets[i + 1]])

    @property
    def has_images(self) -> np.ndarray:
        """bool [n]: the sample has at least one image."""
        return self.hw_offsets[1:] > self.hw_offsets[:-1]

    def arrays(self) -> dict:
        return dict(index=self.index, length=self.length, truncated=self.truncated, hw_offsets=self.hw_offsets, hw=self.hw)
