"""LLaVA's `train_mem.py`: the same training with flash-attention 2 as the default kernel.

Launch scripts run `deepspeed llava/train/train_mem.py ...`. Where flash-attn
cannot run (no CUDA, package missing) the model falls back to SDPA with one
warning; `--attn_implementation` still overrides the default.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: Python put llava/train/ first on sys.path; put the repository root there instead.
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path[0] = str(_here.parents[1])

from llava.train.train import train  # noqa: E402

if __name__ == "__main__":
    train(attn_implementation="flash_attention_2")
