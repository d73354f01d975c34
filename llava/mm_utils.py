"""LLaVA's multimodal helpers: prompt tokenisation with image markers, image tiling.

Public names and signatures follow LLaVA's `llava/mm_utils.py`, so LLaVA's
scripts and lmms-eval's `llava` adapter run unchanged. The anyres pixels equal
transformers' `LlavaNextImageProcessorPil` (the reference the converted model
is used with), computed faster: every resize is one PIL call on uint8, tiles
are numpy views of one padded canvas, and `llava.pixel_recipe.TileRecipe`
rescales and normalises all tiles at once with transformers' exact arithmetic.
All size maths comes from `llava.anyres`.
"""

from __future__ import annotations

import base64
import math
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria

from llava import anyres
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.pixel_recipe import TileRecipe

# ----------------------------------------------------------------------------- text


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of `prompt` with one `image_token_index` per "<image>" marker.

    Each text chunk is tokenised on its own (as LLaVA does) without special
    tokens; a single BOS starts the sequence iff the tokenizer adds one to plain
    text (llama2/mistral do, qwen2 does not). Empty chunks add nothing.
    """
    ids = bos_prefix(tokenizer, prompt)
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors {return_tensors!r}; use None or 'pt'")


def bos_prefix(tokenizer, prompt: str, tokenizer_adds_bos: bool | None = None) -> list[int]:
    """`[bos]` when the tokenizer adds one to plain text and `prompt` does not already start with it.

    Templates such as `llava_llama_3` write `<|begin_of_text|>` themselves; a
    real Meta-Llama-3 tokenizer also adds it, which would double it. Callers
    handling many prompts pass `tokenizer_adds_bos` (`adds_bos`) computed once.
    """
    if tokenizer_adds_bos is None:
        tokenizer_adds_bos = adds_bos(tokenizer)
    if not tokenizer_adds_bos or (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token)):
        return []
    return [tokenizer.bos_token_id]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS in front of ordinary text (two probe tokenisations, ~0.1 ms)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True).input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    return len(with_special) > len(without) and with_special[0] == bos


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop generation once every sequence ends with one of `keywords` (LLaVA's criterion).

    Returns one bool per sequence, as transformers 5 expects. Works whether the
    ids passed during generation include the prompt (`input_ids` given to
    `generate`) or only the new tokens (generation from `inputs_embeds`).
    """

    def __init__(self, keywords, tokenizer, input_ids):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword, add_special_tokens=False).input_ids
            if ids:
                self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=1)
        self.prompt = input_ids[0] if input_ids.dim() == 2 else input_ids
        self.start_len = int(self.prompt.shape[-1])

    def _generated(self, row: torch.Tensor) -> torch.Tensor:
        n = self.start_len
        if row.shape[0] >= n and torch.equal(row[:n].cpu(), self.prompt.cpu()):
            return row[n:]
        return row

    def _row_done(self, row: torch.Tensor) -> bool:
        new = self._generated(row).cpu()
        for ids in self.keyword_ids:
            if new.shape[0] >= ids.shape[0] and torch.equal(new[-ids.shape[0] :], ids):
                return True
        tail = self.tokenizer.decode(new[-(self.max_keyword_len + 2) :], skip_special_tokens=True)
        return any(keyword in tail for keyword in self.keywords)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = [self._row_done(row) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def get_model_name_from_path(model_path: str) -> str:
    """Last path component, or "parent_checkpoint-N" for a trainer checkpoint folder (as LLaVA)."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


# ----------------------------------------------------------------------------- images


def load_image_from_base64(image: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(image)))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' `convert_to_rgb` makes it: transparency is composited onto white.

    Differs from a bare `image.convert("RGB")` for RGBA/LA/PA and palette images
    with a transparent colour (convert would keep the hidden colour values);
    every other mode (L, P, CMYK, I;16, ...) is exactly `convert("RGB")`.
    """
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad to a square with `background_color`, the image centred (LLaVA's 'pad' mode)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def image_tiles(image, processor, recipe: TileRecipe | None, aspect_ratio: str, pinpoints) -> torch.Tensor:
    """Pixels of one PIL image for one layout: float32 [num_tiles, 3, s, s].

    The one per-image function behind the dataset and `process_images`:
    `recipe` is built once from `processor` (`TileRecipe(processor)`, anyres only),
    `aspect_ratio` is normalised (`anyres`, `pad`, `square`) and `pinpoints`
    are parsed `[height, width]` pairs (used by anyres only). anyres: the base
    tile then the grid tiles; pad: one tile, square-padded with the
    processor's mean colour; square: one tile, the processor alone.
    """
    if aspect_ratio == "anyres":
        return anyres_tiles(image, recipe, pinpoints)
    if aspect_ratio == "pad":
        fill = tuple(int(x * 255) for x in processor.image_mean)
        image = expand2square(to_rgb(image), fill)
    return processor(image, return_tensors="pt")["pixel_values"]  # (1, 3, s, s)


def anyres_tiles(image, recipe: TileRecipe, pinpoints) -> torch.Tensor:
    """Anyres tiles of one PIL image: float32 [num_tiles, 3, s, s], base image first.

    The base is the whole image squashed to the processor size; the other
    tiles cut, row-major, the image resized into the best pinpoint canvas
    (aspect kept, zero padding centred). Equal to `LlavaNextImageProcessorPil`.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"anyres tiling expects a PIL image, got {type(image).__name__}")
    tile = recipe.tile
    rgb = to_rgb(image)
    image_hw = (rgb.height, rgb.width)
    rows, cols = anyres.tile_grid_shape(image_hw, pinpoints, tile)
    canvas_hw = (rows * tile, cols * tile)
    new_h, new_w = anyres.resize_for_tiles(image_hw, canvas_hw)
    canvas = np.zeros((*canvas_hw, 3), dtype=np.uint8)
    top, left = (canvas_hw[0] - new_h) // 2, (canvas_hw[1] - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = _resized(rgb, (new_h, new_w), recipe.resample)
    base = np.array(_resized(rgb, recipe.base_hw, recipe.resample))[None]  # (1, bh, bw, 3), writable
    if not (recipe.is_final((tile, tile)) and recipe.is_final(recipe.base_hw) and recipe.base_hw == (tile, tile)):
        grid = canvas.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4)  # (rows, cols, t, t, 3)
        return torch.cat([recipe.finish(base), recipe.finish(grid.reshape(rows * cols, tile, tile, 3))])
    # Common case: tiles are already final; normalise straight from the canvas into the output.
    out = torch.empty((rows * cols + 1, 3, tile, tile), dtype=torch.float32)
    recipe.normalize(torch.from_numpy(base), out[:1])
    grid = torch.from_numpy(canvas).view(rows, tile, cols, tile, 3).transpose(1, 2)  # (rows, cols, t, t, 3)
    recipe.normalize(grid, out[1:].view(rows, cols, 3, tile, tile))
    return out


def _resized(rgb: Image.Image, hw, resample) -> np.ndarray:
    if (rgb.height, rgb.width) == tuple(hw):
        return np.asarray(rgb)
    return np.asarray(rgb.resize((hw[1], hw[0]), resample=resample))


def process_anyres_image(image, processor, grid_pinpoints) -> torch.Tensor:
    """LLaVA's entry point: anyres tiles of one PIL image (`anyres_tiles` with a recipe built here)."""
    recipe = TileRecipe(processor)
    return anyres_tiles(image, recipe, anyres.parse_grid_pinpoints(grid_pinpoints, recipe.tile))


def process_images(images, image_processor, model_cfg):
    """LLaVA's entry point: pixel tensors for a list of PIL images, per `model_cfg.image_aspect_ratio`.

    A thin wrapper around `image_tiles`: the config is read and the recipe
    built once for the list. anyres: one tiles tensor per image (stacked when
    all shapes agree); pad: `[n, 3, s, s]` square-padded; otherwise the
    processor on the whole list. A config without the keys means LLaVA's defaults.
    """
    aspect = anyres.normalize_aspect_ratio(getattr(model_cfg, "image_aspect_ratio", None))
    if aspect == "square":
        return image_processor(images, return_tensors="pt")["pixel_values"]
    recipe = pinpoints = None
    if aspect == "anyres":
        recipe = TileRecipe(image_processor)
        pinpoints = anyres.parse_grid_pinpoints(getattr(model_cfg, "image_grid_pinpoints", None), recipe.tile)
    out = [image_tiles(image, image_processor, recipe, aspect, pinpoints) for image in images]
    if aspect == "pad":
        out = [x[0] for x in out]  # (3, s, s) each, as LLaVA
    if all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out


def select_best_resolution(original_size, possible_resolutions):
    """LLaVA's entry point: `original_size` is PIL (width, height); pinpoints are [height, width].

    Returns the chosen canvas as (width, height), like LLaVA's function.
    """
    width, height = original_size
    best_h, best_w = anyres.select_best_resolution((height, width), possible_resolutions)
    return best_w, best_h


# ----------------------------------------------------------------------------- LLaVA's other image helpers
# LLaVA-NeXT's public helpers, kept for scripts that import them. Our own pipeline tiles with
# `process_anyres_image` above (transformers' arithmetic); these follow LLaVA's, PIL sizes (width, height).


def resize_and_pad_image(image: Image.Image, target_resolution) -> Image.Image:
    """LLaVA's: fit `image` into `target_resolution` (width, height), aspect kept, centred on black.

    The filled side takes the target exactly, the other is rounded up
    (LLaVA's `math.ceil`, capped at the target); PIL's default resampling.
    """
    width, height = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list:
    """Square crops of `patch_size` (LLaVA's "patches" are our tiles), row-major; edge crops are padded by PIL."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size: int):
    """LLaVA's return order: (columns, rows) of tiles for PIL `image_size` (width, height).

    `patch_size` is LLaVA's name for the tile size. Pinpoints are read as
    everywhere here, `[height, width]` (LLaVA reads them as [width, height];
    see docs/Conversion.md); the range form "(1x1),...,(3x3)" is accepted.
    """
    pinpoints = anyres.parse_grid_pinpoints(grid_pinpoints, patch_size)
    rows, cols = anyres.tile_grid_shape((image_size[1], image_size[0]), pinpoints, patch_size)
    return cols, rows


def process_highres_image(image: Image.Image, processor, grid_pinpoints: str) -> torch.Tensor:
    """LLaVA-NeXT's "highres" mode: [1 + n*n, 3, s, s] tiles (the squashed image, then a square grid).

    As LLaVA-NeXT does it: the largest size in the comma-separated
    `grid_pinpoints` is always used; the image is padded to a square with the
    processor's mean colour, resized to that size, and the n = size // s
    non-overlapping tiles of side s (the processor's `shortest_edge`) are cut
    centred in it, row-major.
    """
    tile = processor.size["shortest_edge"]
    side = max(int(x) for x in str(grid_pinpoints).split(","))
    fill = tuple(int(x * 255) for x in processor.image_mean)
    padded = expand2square(image, fill).resize((side, side))
    n = side // tile
    start = (side - n * tile) // 2
    tiles = [image.resize((tile, tile))] + [
        padded.crop((start + c * tile, start + r * tile, start + (c + 1) * tile, start + (r + 1) * tile))
        for r in range(n)
        for c in range(n)
    ]
    return torch.stack([processor.preprocess(t, return_tensors="pt")["pixel_values"][0] for t in tiles], dim=0)
