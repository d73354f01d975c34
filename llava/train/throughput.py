"""Honest throughput logs: samples/s, real tokens/s, padding share and MFU.

Tokens are counted as the LLM sees them after the image splice: each row's
text tokens (attention mask, minus the image markers) plus the image's
`ImageLayout.num_tokens`, capped at the model's maximum length. Pad tokens are
not counted, and their share of the padded batch is logged on its own, so a
high tokens/s cannot hide wasted compute.

MFU counts model FLOPs per token from where gradients flow, not a flat 6N:
2N forward for every weight, 2N backward through the activations of the
layers gradients pass through, and 2N for the weight gradients of trainable
weights only; plus the attention score term. Peak is the device's dense
bf16 figure.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.splice import sample_lengths
from llava.model.weights import role_ids

# Dense bf16 peak FLOP/s by device-name substring (most specific first).
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))


def device_peak_flops(name: str | None = None) -> float | None:
    """The bf16 peak of the current CUDA device, or None when unknown (CPU, unlisted GPU)."""
    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def _rows(inputs: dict) -> tuple[list[torch.Tensor], bool]:
    """The samples of a collated batch as id rows without padding, and whether the batch is packed.

    A packed batch (`DataCollatorForPackedSequences`: no attention mask,
    position_ids restarting per sample) is split at its sample starts.
    """
    input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    if mask is None and inputs.get("position_ids") is not None:
        return list(input_ids.reshape(-1).split(sample_lengths(inputs["position_ids"]))), True
    if mask is None:
        return list(input_ids), False
    return [row[m.bool()] for row, m in zip(input_ids, mask)], False


def count_batch_tokens(inputs: dict, layout, max_length: int | None) -> tuple[int, int, int]:
    """(samples, real tokens, computed slots) of one collated batch, after the image splice.

    `images`/`image_sizes` are flat over the batch in marker order, so sample s
    owns the next `markers_s` image sizes (PIL width, height). A padded batch
    computes samples x longest; a packed one computes exactly its tokens.
    """
    samples, packed = _rows(inputs)
    sizes = list(inputs.get("image_sizes") or [])
    rows, cursor = [], 0
    for ids in samples:
        n_markers = int((ids == IMAGE_TOKEN_INDEX).sum())
        image_tokens = 0
        for w, h in sizes[cursor : cursor + n_markers]:
            image_tokens += layout.num_tokens((int(h), int(w))) if layout is not None else 0
        cursor += n_markers
        n = int(ids.shape[0]) - n_markers + image_tokens
        rows.append(min(n, max_length) if max_length else n)
    computed = sum(rows) if packed else max(rows, default=0) * len(rows)
    return len(rows), sum(rows), computed


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # ZeRO-3 keeps the full size in ds_numel


def flops_per_token(model) -> dict[str, float]:
    """Training FLOPs per LLM token and per vision patch (see the module docstring)."""
    tower_ids = role_ids(model)["vision_tower"]
    llm_total = llm_trainable = tower_total = tower_trainable = 0
    for p in model.parameters():
        n = _numel(p)
        if id(p) in tower_ids:
            tower_total += n
            tower_trainable += n if p.requires_grad else 0
        else:
            llm_total += n
            llm_trainable += n if p.requires_grad else 0
    cfg = model.config
    # Per layer, QK^T and AV cost 2 * 2 * ctx * hidden forward; backward doubles it: 12 * ctx * hidden.
    attn_per_ctx = 12 * cfg.num_hidden_layers * cfg.hidden_size
    # Gradients reach the LLM's inputs whenever anything upstream (projector, tower) trains.
    llm = 2 * llm_total + 2 * llm_total + 2 * llm_trainable
    vision = 2 * tower_total + (2 * tower_total + 2 * tower_trainable if tower_trainable else 0)
    return {"llm": float(llm), "vision_patch": float(vision), "attn_per_ctx": float(attn_per_ctx)}


class ThroughputCallback(TrainerCallback):
    """Adds samples_per_second, tokens_per_second, padding_share (and mfu on GPU) to each log.

    The trainer feeds it batch counts (`add_batch`); it must sit first in the
    callback list so the reporters (wandb, tensorboard, printer) see its keys.
    Figures are per process; samples/s is multiplied by the world size.
    """

    def __init__(self, layout=None, max_length: int | None = None, peak_flops: float | None = None):
        self.layout = layout
        self.max_length = max_length
        self.peak_flops = peak_flops if peak_flops is not None else device_peak_flops()
        self.flops = None
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.t0, self.samples, self.tokens, self.padded, self.model_flops = now, 0, 0, 0, 0.0

    def add_batch(self, inputs: dict, tiles: int = 0) -> None:
        samples, tokens, padded = count_batch_tokens(inputs, self.layout, self.max_length)
        self.samples += samples
        self.tokens += tokens
        self.padded += padded
        if self.flops is not None:
            seq = padded // max(samples, 1)
            patches = tiles * (self.layout.tokens_per_tile if self.layout is not None else 0)
            per_token = self.flops["llm"] + self.flops["attn_per_ctx"] * seq / 2  # causal: half the context
            self.model_flops += tokens * per_token + patches * self.flops["vision_patch"]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and hasattr(model, "get_model"):
            self.flops = flops_per_token(model)
        self._reset(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.samples == 0 or "loss" not in logs:
            return
        now = time.perf_counter()
        elapsed = max(now - self.t0, 1e-9)
        logs["samples_per_second"] = round(self.samples * args.world_size / elapsed, 3)
        logs["tokens_per_second"] = round(self.tokens / elapsed, 1)
        logs["padding_share"] = round(1 - self.tokens / max(self.padded, 1), 4)
        if self.peak_flops and self.model_flops:
            logs["mfu"] = round(self.model_flops / elapsed / self.peak_flops, 4)
        self._reset(now)
