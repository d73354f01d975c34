"""The image splice as small pure tensor functions.

Two steps, shared by every LLM wrapper (a padded batch or a packed one):
1. `pack_image_features`: one image's projected tile features -> its token
   sequence, in transformers' `LlavaNextModel.pack_image_features` order, so
   a converted checkpoint sees the same sequence;
2. `splice_batch`: put each image's tokens where its `IMAGE_TOKEN_INDEX`
   marker was, mask labels there, re-pad the batch and rebuild attention mask
   and position ids; `splice_packed` does the same per sample for a
   padding-free batch (docs/Packing.md) and keeps the samples in one row.

All size maths comes from `llava.anyres` (`ImageLayout`, `unpad_bounds`).
"""

from __future__ import annotations

import torch

from llava.anyres import ImageLayout, unpad_bounds
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def split_images(images) -> list[torch.Tensor]:
    """Normalise `images` to a list of `[num_tiles, 3, s, s]` tensors, one per image.

    Accepts LLaVA's forms: a list (3-D items are single tiles), a stacked 5-D
    tensor, or a 4-D `[num_images, 3, s, s]` tensor of single-tile images.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim == 5:
            return list(images.unbind(0))
        if images.ndim == 4:
            return [img.unsqueeze(0) for img in images.unbind(0)]
        raise ValueError(f"images tensor must be 4-D or 5-D, got shape {tuple(images.shape)}")
    return [img.unsqueeze(0) if img.ndim == 3 else img for img in images]


def pack_image_features(
    features: torch.Tensor, image_hw, layout: ImageLayout, image_newline: torch.Tensor | None = None
) -> torch.Tensor:
    """features [num_tiles, tokens_per_tile, H] of one image -> [layout.num_tokens(image_hw), H].

    Base tile first; then, for anyres, the tile grid stitched into one feature
    map (`spatial`), unpadded with a newline embedding closing each row
    (`spatial_unpad`), or the tiles one after another (`flat`).
    """
    hidden = features.shape[-1]
    if not layout.is_anyres:
        packed = features[0]
        if layout.uses_newline:
            packed = torch.cat([packed, image_newline[None].to(packed)], dim=0)
    elif layout.merge_type == "flat":
        packed = features.flatten(0, 1)
    else:
        rows, cols = layout.grid_shape(image_hw)
        n = layout.patches_per_side
        if features.shape[0] != rows * cols + 1:
            raise ValueError(
                f"image of size (h, w)={tuple(image_hw)} needs {rows * cols + 1} tiles, got {features.shape[0]}"
            )
        grid = features[1:].view(rows, cols, n, n, hidden)  # (rows, cols, n, n, H)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(rows * n, cols * n, hidden)  # (rows*n, cols*n, H)
        if layout.uses_newline:
            top, h, left, w = unpad_bounds(image_hw, (rows * n, cols * n))
            grid = grid[top : top + h, left : left + w]  # (h, w, H)
            newline = image_newline.to(grid).expand(h, 1, hidden)
            grid = torch.cat([grid, newline], dim=1)  # (h, w + 1, H)
        packed = torch.cat([features[0], grid.reshape(-1, hidden)], dim=0)
    expected = layout.num_tokens(image_hw)
    assert packed.shape[0] == expected, f"packed {packed.shape[0]} image tokens, layout says {expected}"
    return packed


def splice_batch(
    input_ids: torch.Tensor,
    text_embeds: torch.Tensor,
    image_tokens: list[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
    max_length: int | None = None,
):
    """Replace each `IMAGE_TOKEN_INDEX` by its image's tokens and re-pad the batch.

    input_ids [B, L] (markers included), text_embeds [B, L, H] (embeddings of
    `input_ids`, any value at markers), image_tokens: one [n_i, H] per marker
    in reading order over the batch. Padding in the input (attention_mask 0)
    is dropped first. Returns (inputs_embeds [B, T, H], attention_mask [B, T]
    bool, position_ids [B, T], labels [B, T] or None); positions count real
    tokens from 0 in each row.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    _check_markers(input_ids, keep, len(image_tokens))
    images = iter(image_tokens)
    rows_embeds, rows_labels = [], []
    for b in range(input_ids.shape[0]):
        real = keep[b].nonzero().squeeze(1)
        row_labels = labels[b, real] if labels is not None else None
        row_embeds, row_labels = _splice_row(input_ids[b, real], text_embeds[b, real], row_labels, images, max_length)
        rows_embeds.append(row_embeds)
        rows_labels.append(row_labels)
    return _pad(rows_embeds, rows_labels if labels is not None else None, padding_side)


def _check_markers(input_ids: torch.Tensor, keep: torch.Tensor, n_images: int) -> None:
    n_markers = int(((input_ids == IMAGE_TOKEN_INDEX) & keep).sum())
    if n_markers != n_images:
        raise ValueError(f"the batch has {n_markers} image markers (IMAGE_TOKEN_INDEX) but {n_images} images were given")


def _splice_row(ids, embeds, row_labels, images, max_length):
    """One sample (or padded row without its padding): ids [L], embeds [L, H], labels [L] or None.

    `images` is an iterator over the image token tensors; this row takes one per
    marker. Returns (embeds [T, H], labels [T] or None), truncated to `max_length`.
    """
    starts = (ids == IMAGE_TOKEN_INDEX).nonzero().squeeze(1).tolist()
    pieces, label_pieces, prev = [], [], 0
    for pos in starts:
        image = next(images)
        pieces += [embeds[prev:pos], image.to(embeds.dtype)]
        if row_labels is not None:
            label_pieces += [row_labels[prev:pos], row_labels.new_full((image.shape[0],), IGNORE_INDEX)]
        prev = pos + 1
    pieces.append(embeds[prev:])
    out_labels = None
    if row_labels is not None:
        label_pieces.append(row_labels[prev:])
        out_labels = torch.cat(label_pieces)[:max_length]
    return torch.cat(pieces)[:max_length], out_labels


def sample_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the samples packed in `position_ids` [B, L] (each restarts at 0), in reading order over rows.

    Every row must start a sample: a sample split across rows would see only part of itself.
    """
    if position_ids.ndim != 2 or not bool((position_ids[:, 0] == 0).all()):
        raise ValueError(f"packed position_ids must be [rows, length] with every row starting at 0, "
                         f"got shape {tuple(position_ids.shape)}")
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().squeeze(1).tolist() + [flat.numel()]
    return [end - start for start, end in zip(starts[:-1], starts[1:])]


def splice_packed(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    text_embeds: torch.Tensor,
    image_tokens: list[torch.Tensor],
    labels: torch.Tensor | None = None,
    max_length: int | None = None,
):
    """The splice for a padding-free batch: samples packed in rows, positions restarting at 0 per sample.

    Each sample is spliced on its own (so `max_length` truncates each sample,
    exactly as in the padded batch), then all samples go into one row. Returns
    (inputs_embeds [1, T, H], position_ids [1, T], labels [1, T] or None,
    sample lengths after the splice). Each sample's first label is IGNORE_INDEX,
    so no token is trained to predict the next sample's first token.
    """
    lengths = sample_lengths(position_ids)
    _check_markers(input_ids, torch.ones_like(input_ids, dtype=torch.bool), len(image_tokens))
    flat_ids, flat_embeds = input_ids.reshape(-1), text_embeds.reshape(-1, text_embeds.shape[-1])
    flat_labels = labels.reshape(-1) if labels is not None else None
    images = iter(image_tokens)
    embeds, out_labels, out_lengths, start = [], [], [], 0
    for n in lengths:
        span = slice(start, start + n)
        sample_labels = flat_labels[span] if flat_labels is not None else None
        row_embeds, row_labels = _splice_row(flat_ids[span], flat_embeds[span], sample_labels, images, max_length)
        embeds.append(row_embeds)
        out_lengths.append(row_embeds.shape[0])
        if row_labels is not None:
            out_labels.append(torch.cat([row_labels.new_full((1,), IGNORE_INDEX), row_labels[1:]]))
        start += n
    positions = torch.cat([torch.arange(n, device=input_ids.device) for n in out_lengths])
    new_labels = torch.cat(out_labels)[None] if flat_labels is not None else None
    return torch.cat(embeds)[None], positions[None], new_labels, out_lengths


def _pad(rows_embeds, rows_labels, padding_side):
    """Stack ragged rows into a padded batch with mask and per-row positions."""
    batch, longest = len(rows_embeds), max(r.shape[0] for r in rows_embeds)
    first = rows_embeds[0]
    embeds = first.new_zeros(batch, longest, first.shape[-1])
    mask = torch.zeros(batch, longest, dtype=torch.bool, device=first.device)
    positions = torch.zeros(batch, longest, dtype=torch.long, device=first.device)
    labels = None
    if rows_labels is not None:
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=first.device)
    for b, row in enumerate(rows_embeds):
        n = row.shape[0]
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        embeds[b, span] = row
        mask[b, span] = True
        positions[b, span] = torch.arange(n, device=first.device)
        if labels is not None:
            labels[b, span] = rows_labels[b]
    return embeds, mask, positions, labels
