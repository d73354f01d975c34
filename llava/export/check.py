"""The converter's built-in proof: a converted folder computes what our model computes.

Both sides get the same generated image and the same conversation, each
through its own public path: ours through LLaVA's entry points
(`tokenizer_image_token`, `process_images`, PIL `image.size`), transformers'
through `AutoProcessor` + `LlavaNextForConditionalGeneration` loaded offline
from the folder. Equal prompts, equal logits and equal greedy tokens cover the
weights, the tiling, the token counts and the chat template at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.weights import check_matches_files

QUESTION = "What is shown in this image?"


@dataclass
class CheckResult:
    """What the check measured; `line()` is the one line the converter prints."""

    max_abs_logit_diff: float
    """Largest |our logit - transformers' logit| over every position and image."""
    max_abs_logit: float
    """Largest |logit| seen, to scale the tolerance for big models."""
    tokens_equal: bool
    """Greedy continuations are identical."""
    prompt_ids_equal: bool
    """Prompt ids agree (transformers' run of image tokens counted as our one marker)."""
    chat_template_equal: bool
    """`processor.apply_chat_template` renders exactly `conv.get_prompt()`."""

    def line(self) -> str:
        return (
            f"check: max_abs_logit_diff={self.max_abs_logit_diff:.3g} tokens_equal={self.tokens_equal} "
            f"prompt_ids_equal={self.prompt_ids_equal} chat_template_equal={self.chat_template_equal}"
        )

    def passed(self, tolerance: float) -> bool:
        scaled = tolerance * max(1.0, self.max_abs_logit)
        ok = self.tokens_equal and self.prompt_ids_equal and self.chat_template_equal
        return ok and self.max_abs_logit_diff <= scaled


def generated_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic picture with structure (gradients and a block), no download needed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // max(width + height, 1)], -1)
    rgb = rgb.astype(np.uint8)
    rgb[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 255, size=3, dtype=np.uint8)
    return Image.fromarray(rgb, "RGB")


def check_images(tile: int) -> list[Image.Image]:
    """A wide and a tall image (two tile grids, padding on different sides) sized from the tile."""
    return [generated_image(2 * tile + tile // 3, tile + 5, 0), generated_image(tile // 2 + 3, tile + tile // 2, 1)]


def conversations(conv_mode: str):
    """(our prompt, transformers messages) pairs: a first turn, and a second turn after a reply."""
    from llava.conversation import get_conversation_template

    first = get_conversation_template(conv_mode)
    first.append_message(first.roles[0], f"<image>\n{QUESTION}")
    first.append_message(first.roles[1], None)
    hf_first = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

    second = get_conversation_template(conv_mode)
    second.append_message(second.roles[0], f"<image>\n{QUESTION}")
    second.append_message(second.roles[1], "A picture.")
    second.append_message(second.roles[0], "Describe it in detail.")
    second.append_message(second.roles[1], None)
    hf_second = hf_first + [
        {"role": "assistant", "content": [{"type": "text", "text": "A picture."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe it in detail."}]},
    ]
    return [(first.get_prompt(), hf_first), (second.get_prompt(), hf_second)]


def check_chat_template(processor, conv_mode: str) -> bool:
    return all(
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
        for prompt, messages in conversations(conv_mode)
    )


def _collapse_image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """transformers expands `<image>` into one token per feature; fold each run back into our marker."""
    out = []
    for i in ids:
        if i == image_token_id:
            if not out or out[-1] != IMAGE_TOKEN_INDEX:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(i)
    return out


@torch.no_grad()
def compare_with_hf(model, tokenizer, image_processor, hf_dir, conv_mode: str, max_new_tokens: int = 8) -> CheckResult:
    """Reload `hf_dir` offline in fp32 and compare it with our `model` (fp32, CPU) on generated images.

    First the folder's files must hold exactly the tensors the model has
    (names and shapes, read from the safetensors headers); else ValueError.
    """
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from llava.mm_utils import process_images, tokenizer_image_token

    hf = LlavaNextForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()
    check_matches_files(hf, hf_dir)  # from_pretrained re-initialises a missing tensor
    processor = AutoProcessor.from_pretrained(hf_dir, local_files_only=True)
    model = model.to(torch.float32).eval()
    prompt = conversations(conv_mode)[0][0]
    eos = hf.generation_config.eos_token_id
    pad = hf.generation_config.pad_token_id
    diff = peak = 0.0
    tokens_equal = ids_equal = True
    for image in check_images(int(model.config.mm_vision_config["image_size"])):
        ours_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
        tiles = process_images([image], image_processor, model.config)
        ours = model(input_ids=ours_ids, images=tiles, image_sizes=[image.size]).logits[0]
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        theirs = hf(**inputs).logits[0]
        ids_equal &= _collapse_image_runs(inputs["input_ids"][0].tolist(), hf.config.image_token_index) == ours_ids[0].tolist()
        if ours.shape[0] != theirs.shape[0]:  # sequence lengths differ: tokens or image token counts disagree
            return CheckResult(float("inf"), 0.0, False, ids_equal, check_chat_template(processor, conv_mode))
        theirs = theirs[:, : ours.shape[1]]  # the added <image> row has no counterpart in ours
        diff = max(diff, (ours - theirs).abs().max().item())
        peak = max(peak, ours.abs().max().item())
        ours_new = model.generate(ours_ids, images=tiles, image_sizes=[image.size], max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=eos, pad_token_id=pad)
        theirs_new = hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        theirs_new = theirs_new[0, inputs["input_ids"].shape[1]:].tolist()
        tokens_equal &= ours_new[0].tolist() == theirs_new
    return CheckResult(diff, peak, tokens_equal, ids_equal, check_chat_template(processor, conv_mode))
