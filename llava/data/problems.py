"""Bad-data bookkeeping: what can be wrong with a sample, and the skip-or-fail policy.

A long run must not die at hour 15 because of one broken image, and must not
silently train on nothing either. Every problem is a `DataProblem` with a kind
from `PROBLEM_KINDS`; a `ProblemLog` either counts it (the sample is skipped)
or, in strict mode, raises it at once with the sample id and the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections import Counter
from pathlib import Path

import torch.distributed as dist

logger = logging.getLogger(__name__)

PROBLEM_KINDS = {
    "bad_json_line": "a JSONL line is not valid JSON or not UTF-8 (the sample id is file:line)",
    "malformed": "the record is not a LLaVA sample (no 'conversations' list of {'from', 'value'} turns)",
    "unknown_role": "a turn's 'from' is not human/user, gpt/assistant or system",
    "no_reply": "no assistant reply to train on",
    "image_token_mismatch": "the number of '<image>' markers differs from the number of images",
    "missing_image": "an image file does not exist",
    "empty_image": "an image file is empty (0 bytes)",
    "corrupt_image": "an image file's header cannot be read",
    "decode_error": "an image's pixels failed to decode (truncated or corrupt data after a valid header)",
    "over_length": "longer than model_max_length (images are never cut)",
    "all_masked": "every label would be masked (nothing to learn from)",
    "text_only_frozen_llm": "a text-only sample while the LLM is frozen (projector stage): it reaches no trained weight",
}
"""Kind -> what it means. The order is the order of the report."""


class DataProblem(ValueError):
    """One sample cannot be trained on; `kind` is a key of `PROBLEM_KINDS`."""

    def __init__(self, kind: str, detail: str, sample_id=None):
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown data problem kind {kind!r}; known: {list(PROBLEM_KINDS)}")
        self.kind, self.detail, self.sample_id = kind, detail, sample_id
        where = f"sample {sample_id}: " if sample_id is not None else ""
        super().__init__(f"{where}{kind}: {detail}")

    def with_id(self, sample_id) -> "DataProblem":
        return DataProblem(self.kind, self.detail, sample_id)


class ProblemLog:
    """Counts problems per kind and keeps the first few sample ids of each.

    With `strict=True`, `add` raises the problem instead (fail fast).
    """

    def __init__(self, strict: bool = False, keep_ids: int = 5):
        self.strict = strict
        self.keep_ids = keep_ids
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = {}

    def add(self, problem: DataProblem):
        if self.strict:
            raise problem
        self.counts[problem.kind] += 1
        ids = self.examples.setdefault(problem.kind, [])
        if len(ids) < self.keep_ids:
            ids.append(problem.sample_id)

    def absorb(self, other: "ProblemLog") -> None:
        """Add `other`'s counts and example ids to these (never raises, even when strict)."""
        for kind, count in other.counts.items():
            self.counts[kind] += count
            ids = self.examples.setdefault(kind, [])
            ids.extend(other.examples.get(kind, [])[: max(0, self.keep_ids - len(ids))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, kept: int | None = None) -> str:
        """One line naming every skip count, e.g. 'data: kept 990, skipped 10 (missing_image=7, ...)'."""
        parts = ", ".join(f"{k}={self.counts[k]}" for k in PROBLEM_KINDS if self.counts[k])
        head = f"data: kept {kept}, " if kept is not None else "data: "
        return f"{head}skipped {self.total} samples" + (f" ({parts})" if parts else "")

    def log(self, kept: int | None = None, log=logger):
        """Per-kind lines with example ids, then the one-line summary (rank 0 only)."""
        if not is_main_process():
            return
        for kind in PROBLEM_KINDS:
            if self.counts[kind]:
                log.warning("skipped %d samples: %s (%s); e.g. %s", self.counts[kind], kind,
                            PROBLEM_KINDS[kind], self.examples[kind])
        (log.warning if self.total else log.info)(self.summary(kept))


class SharedProblems:
    """Problems met while loading samples, counted across the processes of one rank.

    DataLoader workers are separate processes: what they add to a
    `ProblemLog` dies with them. Each process appends one line per problem
    to its own file (`<pid>.tsv`) in a folder the dataset creates in the
    main process, and `collect()` reads every file back. Workers started by
    fork or by spawn both see the folder (its path is pickled with the dataset).
    """

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="llava-data-problems-"))
        weakref.finalize(self, _remove_if_owner, str(self.folder), os.getpid())  # only the creator removes it

    def add(self, problem: DataProblem) -> None:
        fields = (problem.kind, str(problem.sample_id), problem.detail)
        line = "\t".join(" ".join(text.split("\t")).replace("\n", " ") for text in fields)
        with open(self.folder / f"{os.getpid()}.tsv", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")  # one short append per problem: lines from one process never interleave

    def collect(self) -> ProblemLog:
        """Every problem recorded so far by any process, as a `ProblemLog` (counts and first ids)."""
        found = ProblemLog()
        for path in sorted(self.folder.glob("*.tsv")):
            for line in path.read_text(encoding="utf-8").splitlines():
                kind, sample_id, detail = line.split("\t", 2)
                found.add(DataProblem(kind, detail, sample_id))
        return found


def _remove_if_owner(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def is_main_process() -> bool:
    """True on rank 0 (or without distributed): logs are written once, not once per GPU."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
