"""Convert a checkpoint of this project into transformers' LlavaNext format, then prove it.

    python -m llava.export.convert --model-path SRC --output-dir DST
    (or: bash convert_llava_next_weights_to_hf.sh SRC DST)

Writes a `LlavaNextForConditionalGeneration` folder with its `LlavaNextProcessor`
(image processor with the model's grid pinpoints, the tokenizer with `<image>`
added, patch size, feature strategy and a chat template that renders exactly
our conversation template). It runs on CPU, offline, and never pushes
anywhere. The weight mapping lives in `llava.export.hf_mapping`, which refuses
to drop or invent a tensor. Finally the folder is reloaded offline and its
logits and greedy tokens are compared with ours on a generated image
(`llava.export.check`); a mismatch exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import stop_token_ids
from llava.export.chat_template import chat_template_for, guess_conv_mode


def add_image_token(tokenizer) -> int:
    """Add `<image>` as a special token (once) and return its id."""
    from tokenizers import AddedToken

    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)


def tokenizer_for_export(tokenizer):
    """A copy of `tokenizer` that gives the same ids after transformers reloads it as a llava_next tokenizer.

    transformers loads the tokenizer of a `llava_next` folder as the generic
    `TokenizersBackend`, not as the `LlamaTokenizer` a Vicuna/Llama-2 model
    was trained with. `LlamaTokenizer` starts every piece of text between
    special tokens (`<image>`, `</s>`) with the SentencePiece space '▁', as
    LLaVA's per-chunk tokenisation does; the plain backend with Metaspace
    `prepend_scheme='first'` does that only at the start of the string. Saving
    `prepend_scheme='always'` keeps the ids; `prompt_ids_equal` in the check proves it.
    """
    import copy

    from tokenizers.pre_tokenizers import Metaspace

    out = copy.deepcopy(tokenizer)
    backend = out.backend_tokenizer
    pre = backend.pre_tokenizer
    if type(tokenizer).__name__ == "LlamaTokenizer" and isinstance(pre, Metaspace) and pre.prepend_scheme == "first":
        backend.pre_tokenizer = Metaspace(replacement=pre.replacement, prepend_scheme="always", split=pre.split)
    return out


def build_image_processor(ours, grid_pinpoints):
    """transformers' LlavaNextImageProcessorPil doing what our tower's processor does per tile."""
    from transformers import LlavaNextImageProcessorPil

    size = dict(ours.size)
    return LlavaNextImageProcessorPil(
        size=size,
        crop_size=dict(getattr(ours, "crop_size", None) or size),
        do_center_crop=bool(getattr(ours, "do_center_crop", False)),
        resample=ours.resample,
        do_rescale=bool(getattr(ours, "do_rescale", True)),
        rescale_factor=float(getattr(ours, "rescale_factor", 1 / 255)),
        do_normalize=bool(getattr(ours, "do_normalize", True)),
        image_mean=list(ours.image_mean),
        image_std=list(ours.image_std),
        do_convert_rgb=True,
        image_grid_pinpoints=[list(p) for p in grid_pinpoints],
    )


def build_processor(model, tokenizer, image_processor, conv_mode: str):
    """The LlavaNextProcessor for our model: token counts and prompts as our code makes them."""
    from transformers import LlavaNextProcessor

    vision = model.config.mm_vision_config
    clip = vision["model_type"] == "clip_vision_model"
    return LlavaNextProcessor(
        image_processor=build_image_processor(image_processor, model.config.image_grid_pinpoints),
        tokenizer=tokenizer_for_export(tokenizer),
        patch_size=int(vision["patch_size"]),
        # CLIP: features drop CLS ('default'), and the processor counts it as the +1 it removes
        vision_feature_select_strategy="default" if clip else "full",
        num_additional_image_tokens=1 if clip else 0,
        chat_template=chat_template_for(conv_mode),
        image_token=DEFAULT_IMAGE_TOKEN,
    )


def stored_dtype(model_path) -> str:
    """The dtype name the checkpoint was saved in (config.json), so the export keeps its size; float32 if unsaid."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{model_path}/config.json: unexpected dtype {name!r}; pass --save-dtype")
    return name


def convert(model_path, output_dir, model_base=None, conv_mode=None, save_dtype="auto"):
    """Load ours (CPU, fp32), map, save model + processor into `output_dir`; return what the check needs."""
    import torch

    from llava.mm_utils import get_model_name_from_path
    from llava.export.hf_mapping import check_expressible, llava_to_hf
    from llava.model.builder import load_pretrained_model
    from llava.model import LlavaConfig
    from llava.model.reference import checkpoint_has_tower, read_llava_config
    from llava.model.vision_lora import STATE_PREFIX as VISION_LORA_STATE_PREFIX
    from llava.model.weights import check_matches_files

    check_expressible(read_llava_config(model_path, LlavaConfig))  # name the setting before loading any weight
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(model_path), model_base, get_model_name_from_path(str(model_path)), device="cpu", torch_dtype="float32"
    )
    # Counted from the files themselves: from_pretrained would have filled a missing tensor with random values.
    # The tower's LoRA branches (--mm_vision_lora_enable) were merged into its weights by load_pretrained_model.
    # A reference-code checkpoint may keep no tower weights: load_pretrained_model read them from its folder.
    may_lack = () if checkpoint_has_tower(model_path) else ("model.vision_tower.",)
    read = check_matches_files(model, model_path, may_lack=may_lack, merged=(VISION_LORA_STATE_PREFIX,)) \
        if model_base is None else None
    if read is not None and may_lack:  # the tower's tensors were read too, from its folder
        read += sum(1 for name in model.state_dict() if name.startswith(may_lack))
    stored = stored_dtype(model_path)
    conv_mode = conv_mode or guess_conv_mode(tokenizer)
    image_token_id = add_image_token(tokenizer)
    hf_model = llava_to_hf(model, image_token_id=image_token_id)  # asserts every tensor is used
    eos = stop_token_ids(tokenizer, conv_mode)
    hf_model.generation_config.eos_token_id = eos
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    hf_model.generation_config.bos_token_id = tokenizer.bos_token_id
    dtype = getattr(torch, stored if save_dtype == "auto" else save_dtype)
    hf_model.to(dtype)
    model.to(dtype).to(torch.float32)  # the check then compares conversion, not a chosen precision loss
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)  # safetensors
    written = check_matches_files(hf_model, out)
    if read is not None and written != read:
        raise ValueError(f"{out}: {written} tensors written for the {read} read from {model_path}")
    print(f"convert: {written} tensors written" + (f" ({read} read from the checkpoint's files)" if read else ""))
    processor = build_processor(model, tokenizer, image_processor, conv_mode)
    processor.save_pretrained(out)
    del hf_model
    return model, tokenizer, image_processor, conv_mode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="our finetuned checkpoint (or LoRA / projector-only with --model-base)")
    parser.add_argument("--output-dir", required=True, help="folder for the transformers model and processor")
    parser.add_argument("--model-base", default=None, help="base LLM folder for a LoRA or projector-only checkpoint")
    parser.add_argument("--conv-mode", default=None,
                        help="conversation template for the chat template: v1, llava_llama_3, qwen_2 (default: from the tokenizer)")
    parser.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the saved weights; auto keeps the checkpoint's")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest allowed |logit difference|, relative to max(1, max |logit|)")
    args = parser.parse_args(argv)

    # Offline and CPU-only, whatever the machine offers (set before torch/transformers load anything).
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

    from llava.export.check import compare_with_hf

    try:
        model, tokenizer, image_processor, conv_mode = convert(
            args.model_path, args.output_dir, args.model_base, args.conv_mode, args.save_dtype
        )
        print(f"convert: wrote {args.output_dir} (conv_mode={conv_mode})")
        result = compare_with_hf(model, tokenizer, image_processor, args.output_dir, conv_mode)
    except (ValueError, KeyError, FileNotFoundError) as err:  # a checkpoint that does not match its model
        print(f"convert: FAILED: {err}", file=sys.stderr)
        return 1
    print(result.line())
    ok = result.passed(args.tolerance)
    if not ok:
        print(f"convert: check FAILED (tolerance {args.tolerance})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
