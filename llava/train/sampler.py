"""LLaVA's modality-length grouped sampler, rewritten to handle every data mix.

Idea (LLaVA's): a micro-batch holds only image samples or only text samples,
and samples of similar length, so little compute goes to padding and the
image/no-image code paths are not mixed in one step. Lengths are signed, as in
LLaVA's `modality_lengths`: positive for a sample with an image, negative for
text only.

Differences from LLaVA: all-image and all-text data work (LLaVA crashed on
both), and the order depends only on (seed, epoch), through `set_epoch`, so a
resumed run replays exactly the order of the interrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


def _balanced_chunks(megabatch: list[int], lengths: Sequence[int], num_chunks: int, chunk_size: int) -> list[int]:
    """Reorder a full megabatch into `num_chunks` chunks of `chunk_size`, longest first, with even total lengths.

    Greedy: each sample (longest first) goes to the chunk with the least total
    length that still has room. Chunks are then concatenated, so chunk k is the
    k-th micro-batch of the megabatch.
    """
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for idx in sorted(megabatch, key=lambda i: abs(lengths[i]), reverse=True):
        open_chunks = [c for c in range(num_chunks) if len(chunks[c]) < chunk_size]
        target = min(open_chunks, key=lambda c: totals[c])
        chunks[target].append(idx)
        totals[target] += abs(lengths[idx])
    return [i for chunk in chunks for i in chunk]


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, num_chunks: int, generator: torch.Generator, pure: bool = False
) -> list[int]:
    """A permutation of `range(len(lengths))` with same-modality, similar-length micro-batches.

    `num_chunks` is how many consecutive micro-batches make one "megabatch"
    (world size x gradient accumulation, as in LLaVA): within it every
    micro-batch has a single modality and a similar total length, so ranks are
    balanced. Leftovers of both modalities, fewer than a megabatch each, go
    last, sorted by length. With `pure`, each modality's leftovers are instead
    topped up to a full megabatch with random repeats of that modality, so no
    step ever mixes modalities across ranks (needed by ZeRO-3, see train.py).
    """
    if batch_size < 1 or num_chunks < 1:
        raise ValueError(f"batch_size and num_chunks must be >= 1, got {batch_size}, {num_chunks}")
    mega = batch_size * num_chunks
    full, leftovers = [], []
    for group in ([i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]):
        if not group:
            continue
        perm = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        if pure and len(perm) % mega:
            extra = torch.randint(len(group), (mega - len(perm) % mega,), generator=generator).tolist()
            perm += [group[j] for j in extra]
        cut = len(perm) - len(perm) % mega
        full += [perm[k : k + mega] for k in range(0, cut, mega)]
        leftovers += perm[cut:]
    order = torch.randperm(len(full), generator=generator).tolist()
    indices = [i for k in order for i in _balanced_chunks(full[k], lengths, num_chunks, batch_size)]
    # Sorting leftovers by modality then length keeps modalities apart wherever a batch boundary allows.
    indices += sorted(leftovers, key=lambda i: (lengths[i] > 0, abs(lengths[i])), reverse=True)
    return indices


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields `modality_length_grouped_indices` for the current epoch (seed + epoch).

    The Trainer (through accelerate) calls `set_epoch` before each epoch,
    including the epoch a run resumes in.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, num_chunks: int, seed: int = 0, pure: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_chunks = num_chunks
        self.seed = seed
        self.pure = pure
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if not self.pure:
            return len(self.lengths)
        mega = self.batch_size * self.num_chunks
        sizes = (sum(n > 0 for n in self.lengths), sum(n <= 0 for n in self.lengths))
        return sum(-(-n // mega) * mega for n in sizes)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.num_chunks, generator,
                                                    self.pure))
