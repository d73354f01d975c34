"""Batching samples for the trainer (docs/Architecture.md, "Data -> trainer batch")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads `input_ids` with the pad id and `labels` with IGNORE_INDEX; flattens images.

    The attention mask comes from each sample's length, not from comparing ids
    with the pad id: LLaVA sets pad = unk or eos, which also occur as real tokens.
    """

    tokenizer: object
    """The training tokenizer; only its `pad_token_id` is used."""

    def __call__(self, instances) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError(
                f"tokenizer {type(self.tokenizer).__name__} has no pad token; set one before training "
                "(LLaVA uses tokenizer.pad_token = tokenizer.unk_token for v1, eos otherwise)"
            )
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
