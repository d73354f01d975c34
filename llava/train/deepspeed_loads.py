"""DeepSpeed resume without unpickling: its checkpoint engine calls `torch.load(weights_only=False)`.

`weights_only_deepspeed_loads(engine)` swaps, on that engine object and for
the duration of one `load_checkpoint`, its checkpoint engine for one whose
`load` is `torch.load(weights_only=True)` with the few DeepSpeed classes its
states hold allow-listed. Nothing global is patched; what is trusted is in
docs/Checkpoints.md.
"""

from __future__ import annotations

import contextlib

import torch


def deepspeed_safe_globals() -> list:
    """Classes DeepSpeed's model and optimizer states hold besides tensors and containers (allow-listed).

    Found by loading ZeRO-2 and ZeRO-3 bf16 states (tests/test_checkpoint_deepspeed.py): the optimizer
    shards hold a `LossScaler`, `ZeroStageEnum` and `fragment_address`; fp16 runs hold a `DynamicLossScaler`.

    Imported here, not at the top: deepspeed is only imported by runs that use it.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyLoads:
    """A DeepSpeed checkpoint engine whose `load` cannot run pickled code; everything else is the wrapped engine's."""

    def __init__(self, inner, allowed: list):
        self._inner = inner
        self._allowed = allowed

    def load(self, path, map_location=None):
        with torch.serialization.safe_globals(self._allowed):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as err:  # an UnpicklingError names the refused global
                raise RuntimeError(f"refusing {path}: it needs more than tensors and DeepSpeed's allow-listed "
                                   f"states to load (see docs/Checkpoints.md, 'What is trusted'): {err}") from err

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextlib.contextmanager
def weights_only_deepspeed_loads(engine):
    """Within the context, `engine.load_checkpoint` reads every file with `torch.load(weights_only=True)`."""
    if engine.load_universal_checkpoint():
        raise RuntimeError("universal DeepSpeed checkpoints load pickles outside the checkpoint engine; refused")
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyLoads(original, deepspeed_safe_globals())
    try:
        yield engine
    finally:
        engine.checkpoint_engine = original
