"""llava.mm_utils: LLaVA's public helpers, with literal ids on the real vendored tokenizers."""

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil, StoppingCriteriaList

from llava.constants import IMAGE_TOKEN_INDEX
from llava.pixel_recipe import TileRecipe
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    image_tiles,
    load_image_from_base64,
    process_anyres_image,
    process_images,
    select_best_resolution,
    to_rgb,
    tokenizer_image_token,
)

PROMPT = "USER: <image>\nWhat is shown? ASSISTANT:"
MULTI = "<image>\nA<image> and <image>"
I = IMAGE_TOKEN_INDEX
# Frozen from the vendored tokenizers; the decode test below checks them independently.
EXPECTED = {
    "llama2": {
        PROMPT: [1, 3148, 1001, 29901, 29871, I, 29871, 13, 5618, 338, 4318, 29973, 319, 1799, 9047, 13566, 29901],
        MULTI: [1, I, 29871, 13, 29909, I, 322, 29871, I],
        "Hello world": [1, 15043, 3186],
        "": [1],
    },
    "mistral": {
        PROMPT: [1, 2223, 725, 28747, 28705, I, 28705, 13, 3195, 349, 4894, 28804, 8602, 8048, 12738, 28747],
        MULTI: [1, I, 28705, 13, 28741, I, 304, 28705, I],
        "Hello world": [1, 22557, 1526],
        "": [1],
    },
    # This vendored llama3 tokenizer.json has no BOS template, so no BOS is added (we follow the tokenizer).
    "llama3": {
        PROMPT: [6584, 25, 220, I, 198, 3923, 374, 6982, 30, 36660, 3931, 2891, 25],
        MULTI: [I, 198, 32, I, 323, 220, I],
        "Hello world": [9906, 1917],
        "": [],
    },
    "qwen2": {
        PROMPT: [6448, 25, 220, I, 198, 3838, 374, 6839, 30, 35560, 3846, 2821, 25],
        MULTI: [I, 198, 32, I, 323, 220, I],
        "Hello world": [9707, 1879],
        "": [],
    },
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tokenizer_image_token_literals(name, tokenizers):
    tok = tokenizers(name)
    for prompt, ids in EXPECTED[name].items():
        assert tokenizer_image_token(prompt, tok) == ids, prompt
        assert ids.count(I) == prompt.count("<image>")
    tensor = tokenizer_image_token(PROMPT, tok, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.dim() == 1 and tensor.tolist() == EXPECTED[name][PROMPT]
    assert tokenizer_image_token(PROMPT, tok, image_token_index=-7).count(-7) == 1
    with pytest.raises(ValueError, match="return_tensors"):
        tokenizer_image_token(PROMPT, tok, return_tensors="np")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tokenizer_image_token_decodes_back(name, tokenizers):
    """Each run of ids between markers decodes to its text chunk; BOS only at the very start."""
    tok = tokenizers(name)
    for prompt in (PROMPT, MULTI):
        ids = tokenizer_image_token(prompt, tok)
        if tok.bos_token_id is not None:
            assert tok.bos_token_id not in ids[1:]
        chunks = prompt.split("<image>")
        pieces, current = [], []
        for token in ids:
            if token == I:
                pieces.append(current)
                current = []
            else:
                current.append(token)
        pieces.append(current)
        assert len(pieces) == len(chunks)
        for piece, chunk in zip(pieces, chunks):
            text = tok.decode(piece, skip_special_tokens=True)
            # SentencePiece decoders drop the leading space of a chunk (llama2/mistral).
            assert text == chunk or text == chunk.lstrip(" "), (name, text, chunk)


def tiny_clip():
    return CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def test_process_images_anyres_stacks_or_lists():
    proc = tiny_clip()
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints="[[56, 112], [112, 56], [112, 112]]")
    same = [Image.new("RGB", (640, 480), (10, 20, 30)), Image.new("L", (480, 360), 200)]
    out = process_images(same, proc, cfg)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 3, 56, 56)
    torch.testing.assert_close(out[1], process_anyres_image(same[1], proc, [[56, 112], [112, 56], [112, 112]]))
    mixed = process_images([same[0], Image.new("RGB", (300, 100))], proc, cfg)
    assert isinstance(mixed, list) and [t.shape[0] for t in mixed] == [5, 3]
    range_cfg = SimpleNamespace(image_aspect_ratio="anyres_max_9", image_grid_pinpoints="(1x1),...,(2x2)")
    assert process_images([same[0]], proc, range_cfg).shape == (1, 5, 3, 56, 56)


def test_process_images_pad_uses_mean_colour():
    proc = tiny_clip()
    image = Image.new("RGB", (112, 56), (255, 0, 0))
    out = process_images([image], proc, SimpleNamespace(image_aspect_ratio="pad"))
    assert out.shape == (1, 3, 56, 56)
    padded = Image.new("RGB", (112, 112), tuple(int(x * 255) for x in proc.image_mean))
    padded.paste(image, (0, 28))
    expected = torch.as_tensor(np.asarray(proc(padded)["pixel_values"][0]))
    torch.testing.assert_close(out[0], expected)
    # Top rows are the mean colour: (int(255 m) / 255 - m) / std, within one level (1 / 255 / std ~ 0.015) of 0.
    assert out[0, :, :10].abs().max() < 0.015 and out[0, 0, 28].min() > 1.5


def test_process_images_square_is_the_plain_processor():
    proc = SiglipImageProcessorPil(size={"height": 56, "width": 56})
    images = [Image.new("RGB", (100, 30), (0, 255, 0)), Image.new("RGB", (30, 100), (0, 0, 255))]
    for aspect in (None, "square", "resize"):
        out = process_images(images, proc, SimpleNamespace(image_aspect_ratio=aspect))
        assert out.shape == (2, 3, 56, 56)
        torch.testing.assert_close(out, torch.as_tensor(np.asarray(proc(images)["pixel_values"])))


@pytest.mark.parametrize("aspect", ["anyres", "pad", "square"])
def test_image_tiles_is_what_process_images_returns(aspect):
    """One per-image function with a recipe built once, behind both process_images and the dataset."""
    proc = tiny_clip()
    pinpoints = [[56, 112], [112, 56], [112, 112]]
    recipe = TileRecipe(proc) if aspect == "anyres" else None
    images = [Image.new("RGB", (640, 480), (10, 20, 30)), Image.new("RGBA", (90, 200), (200, 10, 30, 128))]
    batch = process_images(images, proc, SimpleNamespace(image_aspect_ratio=aspect, image_grid_pinpoints=pinpoints))
    for image, expected in zip(images, batch):
        tiles = image_tiles(image, proc, recipe, aspect, pinpoints)
        expected = expected if aspect == "anyres" else expected[None]  # pad/square: one (3, s, s) per image
        assert tiles.shape == expected.shape and torch.equal(tiles, expected)
    assert image_tiles(images[0], proc, recipe, aspect, pinpoints).shape[0] == (5 if aspect == "anyres" else 1)


def test_dataset_recipe_must_match_the_layout_tile():
    from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
    from llava.data.dataset import _tile_recipe

    layout = ImageLayout(56, 14, to_pinpoint_tuple(default_grid_pinpoints(56)), "anyres", "spatial_unpad")
    assert _tile_recipe(layout, tiny_clip()).tile == 56
    assert _tile_recipe(ImageLayout(56, 14, layout.grid_pinpoints, "square"), tiny_clip()) is None
    big = CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    with pytest.raises(ValueError, match="112-px tiles but the vision tower takes 56-px"):
        _tile_recipe(layout, big)


def test_to_rgb_follows_transformers_convert_to_rgb():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 255, 255], [10, 20, 30]]]  # transparent -> white
    assert np.asarray(rgba.convert("RGB")).tolist() == [[[10, 20, 30], [10, 20, 30]]]  # what convert would give
    for mode in ("L", "P", "CMYK", "I;16", "RGB"):
        image = Image.new("RGB", (3, 2), (200, 100, 50)).convert(mode)
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB"))), mode


def test_select_best_resolution_wrapper_takes_and_returns_width_height():
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # [height, width]
    assert select_best_resolution((640, 480), pinpoints) == (672, 672)
    assert select_best_resolution((2000, 9), pinpoints) == (1008, 336)  # wide image -> wide canvas
    assert select_best_resolution((9, 2000), pinpoints) == (336, 1008)
    assert select_best_resolution((700, 300), [[336, 1008], [1008, 336]]) == (1008, 336)


def test_get_model_name_from_path():
    assert get_model_name_from_path("liuhaotian/llava-v1.6-vicuna-7b") == "llava-v1.6-vicuna-7b"
    assert get_model_name_from_path("/ckpt/llava-v1.6-7b-lora/") == "llava-v1.6-7b-lora"
    assert get_model_name_from_path("/ckpt/llava-next-run/checkpoint-500") == "llava-next-run_checkpoint-500"
    assert get_model_name_from_path("model") == "model"


def test_expand2square_and_base64():
    image = Image.new("RGB", (4, 2), (9, 9, 9))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (4, 4)
    assert np.asarray(square)[0, 0].tolist() == [1, 2, 3] and np.asarray(square)[1, 0].tolist() == [9, 9, 9]
    assert expand2square(square, (0, 0, 0)) is square
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    loaded = load_image_from_base64(base64.b64encode(buffer.getvalue()).decode())
    assert loaded.size == (4, 2) and np.array_equal(np.asarray(loaded.convert("RGB")), np.asarray(image))


@pytest.mark.parametrize("name", ["llama2", "qwen2"])
def test_keywords_stopping_criteria(name, tokenizers):
    tok = tokenizers(name)
    prompt = torch.tensor([tokenizer_image_token("USER: hi ASSISTANT:", tok)])
    stop = tok("</s>", add_special_tokens=False).input_ids if name == "llama2" else tok("###", add_special_tokens=False).input_ids
    keyword = "</s>" if name == "llama2" else "###"
    criteria = StoppingCriteriaList([KeywordsStoppingCriteria([keyword], tok, prompt)])
    text = torch.tensor([tok("Fine thanks", add_special_tokens=False).input_ids])
    scores = torch.zeros(1, 10)
    # Generated ids alone (generation from inputs_embeds) and prompt + generated ids.
    for prefix in (torch.zeros(1, 0, dtype=torch.long), prompt):
        running = torch.cat([prefix, text], 1)
        done = torch.cat([prefix, text, torch.tensor([stop])], 1)
        assert criteria(running, scores).tolist() == [False]
        result = criteria(done, scores)
        assert result.dtype == torch.bool and result.tolist() == [True]
    # The keyword inside the prompt does not stop generation.
    keyword_prompt = torch.cat([prompt, torch.tensor([stop])], 1)
    crit = KeywordsStoppingCriteria([keyword], tok, keyword_prompt)
    assert crit(torch.cat([keyword_prompt, text], 1), scores).tolist() == [False]
    batch = torch.cat([torch.cat([prompt, text, torch.tensor([stop])], 1), torch.cat([prompt, text, text[:, :1]], 1)])
    assert KeywordsStoppingCriteria([keyword], tok, prompt)(batch, scores).tolist() == [True, False]
