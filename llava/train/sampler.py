"""Modality- and length-grouped sampler whose optimizer steps are balanced across ranks.

Lengths are signed, as in LLaVA's `modality_lengths`: positive for a sample
with an image, negative for text only. Every micro-batch holds one modality.

How an epoch's order is built (issue 10):
1. each modality is shuffled and cut into *windows* of `window_steps`
   optimizer steps (`batch_size x world_size x accumulation` samples a step);
2. within a window samples are sorted by length and cut into micro-batches of
   neighbours, so a micro-batch pads (or packs) almost nothing;
3. the window's micro-batches are dealt to its steps longest-first in snake
   order, so each step spans the window's range of lengths, and within a step
   they go to ranks longest-first to the least-loaded rank (two per rank at
   accumulation 2), so every rank's step costs about the same;
4. the steps of all windows are shuffled.

LLaVA's grouping instead mixed long and short samples in one micro-batch to
even out ranks, which undid the length grouping (18.4% padding on a
mix665K-like set; this order: ~0.2%, see tests/test_sampler.py).

The order depends only on (seed, epoch), through `set_epoch`, so a resumed run
replays the interrupted one exactly. All-image and all-text data work.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler

WINDOW_STEPS = 16
"""Optimizer steps per sorting window: larger pads less, smaller keeps the order closer to random."""


def _cost(batch: list[int], lengths: Sequence[int]) -> int:
    """Tokens a padded micro-batch computes: its size times its longest sample."""
    return len(batch) * max(abs(lengths[i]) for i in batch)


def _window_steps(window: list[int], lengths: Sequence[int], batch_size: int, world_size: int, accum: int):
    """A window (a whole number of steps of one modality) -> its steps, each a flat list of indices.

    Micro-batches are cut from sorted neighbours. Then, step by step, the
    `world_size` longest remaining micro-batches open one rank each, and each
    rank is topped up with `accum - 1` remaining micro-batches whose costs come
    closest to a common target (the step's longest plus the shortest left), so
    the ranks of a step cost about the same. accelerate hands batch k to rank
    k % world_size, so a rank's a-th micro-batch is emitted at position
    a * world_size + rank; rank 0 holds the longest, so a too-long batch fails at once.
    """
    ranked = sorted(window, key=lambda i: abs(lengths[i]), reverse=True)  # stable: ties keep the shuffle
    pool = [ranked[k : k + batch_size] for k in range(0, len(ranked), batch_size)]
    pool.sort(key=lambda b: _cost(b, lengths))  # ascending; the longest are popped from the end
    costs = [_cost(b, lengths) for b in pool]
    steps = []
    while pool:
        target = costs[-1] + (accum - 1) * costs[0]  # the longest left plus the shortest left, per rank
        ranks = []
        for _ in range(world_size):
            unit, total = [pool.pop()], costs.pop()
            for a in range(1, accum):
                need = (target - total) / (accum - a)
                k = min(bisect.bisect_left(costs, need), len(costs) - 1)
                if k > 0 and need - costs[k - 1] <= costs[k] - need:
                    k -= 1
                unit.append(pool.pop(k))
                total += costs.pop(k)
            ranks.append(unit)
        steps.append([i for a in range(accum) for unit in ranks for i in unit[a]])
    return steps


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, num_chunks: int, generator: torch.Generator, pure: bool = False,
    world_size: int | None = None, window_steps: int = WINDOW_STEPS,
) -> list[int]:
    """A permutation of `range(len(lengths))` (with repeats when `pure`) built as the module docstring says.

    `num_chunks` is how many consecutive micro-batches make one optimizer step
    (world size x gradient accumulation, as in LLaVA); `world_size` (default:
    `num_chunks`, i.e. no accumulation) says which of them share a rank.
    Leftovers of both modalities, fewer than a step each, go last, sorted by
    modality then length. With `pure`, each modality's leftovers are instead
    topped up to a full step with random repeats of that modality, so no step
    ever mixes modalities across ranks (needed by ZeRO-3, see llava_trainer.py).
    """
    world_size = num_chunks if world_size is None else world_size
    if batch_size < 1 or num_chunks < 1 or window_steps < 1 or world_size < 1 or num_chunks % world_size:
        raise ValueError(f"need batch_size, num_chunks, window_steps >= 1 and num_chunks a multiple of world_size; "
                         f"got {batch_size}, {num_chunks}, {window_steps}, {world_size}")
    step = batch_size * num_chunks
    steps, leftovers = [], []
    for group in ([i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]):
        if not group:
            continue
        perm = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        if pure and len(perm) % step:
            extra = torch.randint(len(group), (step - len(perm) % step,), generator=generator).tolist()
            perm += [group[j] for j in extra]
        cut = len(perm) - len(perm) % step
        for start in range(0, cut, window_steps * step):
            window = perm[start : min(start + window_steps * step, cut)]
            steps += _window_steps(window, lengths, batch_size, world_size, num_chunks // world_size)
        leftovers += perm[cut:]
    order = torch.randperm(len(steps), generator=generator).tolist()
    indices = [i for k in order for i in steps[k]]
    # Sorting leftovers by modality then length keeps modalities apart wherever a batch boundary allows.
    indices += sorted(leftovers, key=lambda i: (lengths[i] > 0, abs(lengths[i])), reverse=True)
    return indices


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields `modality_length_grouped_indices` for the current epoch (seed + epoch).

    The Trainer (through accelerate) calls `set_epoch` before each epoch,
    including the epoch a run resumes in.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, num_chunks: int, seed: int = 0, pure: bool = False,
                 world_size: int | None = None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_chunks = num_chunks
        self.world_size = world_size
        self.seed = seed
        self.pure = pure
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if not self.pure:
            return len(self.lengths)
        step = self.batch_size * self.num_chunks
        sizes = (sum(n > 0 for n in self.lengths), sum(n <= 0 for n in self.lengths))
        return sum(-(-n // step) * step for n in sizes)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.num_chunks, generator,
                                                    self.pure, self.world_size))
