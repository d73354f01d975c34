"""Batching samples for the trainer (docs/Architecture.md, "Data -> trainer batch")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX


def _pad_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no pad token; set one before training "
            "(LLaVA uses tokenizer.pad_token = tokenizer.unk_token for v1, eos otherwise)"
        )
    return pad_id


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads `input_ids` with the pad id and `labels` with IGNORE_INDEX; flattens images.

    The attention mask comes from each sample's length, not from comparing ids
    with the pad id: LLaVA sets pad = unk or eos, which also occur as real tokens.
    """

    tokenizer: object
    """The training tokenizer; only its `pad_token_id` is used."""

    def __call__(self, instances) -> dict:
        pad_id = _pad_id(self.tokenizer)
        if not instances:
            raise ValueError("cannot collate an empty batch")
        width = max(int(x["input_ids"].shape[0]) for x in instances)
        batch = len(instances)
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.bool)
        images, image_sizes = [], []
        for row, x in enumerate(instances):
            n = int(x["input_ids"].shape[0])
            input_ids[row, :n] = x["input_ids"]
            labels[row, :n] = x["labels"]
            attention_mask[row, :n] = True
            images.extend(x.get("images") or [])
            image_sizes.extend(x.get("image_sizes") or [])
        return dict(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            images=images,
            image_sizes=image_sizes,
        )


@dataclass
class DataCollatorForPackedSequences:
    """Padding-free batches (`--packing True`, docs/Packing.md): the micro-batch's samples in one row.

    Returns `input_ids` and `labels` [1, sum of lengths], `position_ids` [1, ...]
    restarting at 0 for each sample, no attention mask (the model and
    transformers read the sample boundaries from the positions), and the flat
    `images` / `image_sizes` in marker order. Each sample's first label is
    IGNORE_INDEX, so no token learns to predict the next sample's first token
    and the Trainer's `num_items_in_batch` (labels[..., 1:] != IGNORE) counts
    exactly the targets of the padded batch. The model splices each sample's
    images before the samples meet.
    """

    tokenizer: object
    """The training tokenizer; only checked for a pad token, so switching collators never changes the setup."""

    def __call__(self, instances) -> dict:
        _pad_id(self.tokenizer)
        if not instances:
            raise ValueError("cannot collate an empty batch")
        ids, labels, positions, images, image_sizes = [], [], [], [], []
        for x in instances:
            n = int(x["input_ids"].shape[0])
            if n == 0:
                raise ValueError("cannot pack an empty sample (0 tokens)")
            ids.append(x["input_ids"])
            labels.append(torch.cat([torch.full((1,), IGNORE_INDEX, dtype=torch.long), x["labels"][1:].long()]))
            positions.append(torch.arange(n, dtype=torch.long))
            images.extend(x.get("images") or [])
            image_sizes.extend(x.get("image_sizes") or [])
        return dict(
            input_ids=torch.cat(ids)[None].long(),
            labels=torch.cat(labels)[None],
            position_ids=torch.cat(positions)[None],
            images=images,
            image_sizes=image_sizes,
        )
