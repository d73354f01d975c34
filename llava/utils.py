"""LLaVA's `llava.utils` names that scripts import: `disable_torch_init`, `rank0_print`, `build_logger`, ...

LLaVA's eval scripts and CLI call `disable_torch_init()` first, LLaVA-NeXT's
code prints through `rank0_print`. Both work here without the side effects
LLaVA had: `disable_torch_init` patches nothing (transformers already skips
initialising weights it then loads), and `build_logger` does not redirect
stdout/stderr.
"""

from __future__ import annotations

import logging
import os

import torch.distributed as dist

from llava.constants import LOGDIR

server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."


def disable_torch_init():
    """Kept for LLaVA's scripts; a no-op.

    LLaVA replaced `nn.Linear.reset_parameters` process-wide to speed up model
    creation. transformers' `from_pretrained` already builds on the meta
    device and skips the random init of loaded weights, and the global patch
    would leave modules created later (e.g. a fresh projector) uninitialised.
    """


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def rank0_print(*args):
    """`print` on rank 0 only (every process prints when not distributed), as LLaVA-NeXT's."""
    rank = _rank()
    if rank is None:
        print(*args)
    elif rank == 0:
        print(f"Rank {rank}: ", *args)


def rank_print(*args):
    """`print` on every rank, prefixed with the rank when distributed."""
    rank = _rank()
    if rank is None:
        print(*args)
    else:
        print(f"Rank {rank}: ", *args)


def build_logger(logger_name, logger_filename):
    """An INFO logger that also writes to `LOGDIR/logger_filename` (LLaVA's serving helper)."""
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    path = os.path.join(LOGDIR, logger_filename)
    if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in logger.handlers):
        os.makedirs(LOGDIR, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
        logger.addHandler(handler)
    return logger


def pretty_print_semaphore(semaphore):
    if semaphore is None:
        return "None"
    return f"Semaphore(value={semaphore._value}, locked={semaphore.locked()})"
