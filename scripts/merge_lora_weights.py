"""Merge a LoRA checkpoint into its base LLM and save a full LLaVA checkpoint (LLaVA's script, same flags).

    python scripts/merge_lora_weights.py --model-path checkpoints/llava-v1.5-7b-lora \\
        --model-base lmsys/vicuna-7b-v1.5 --save-model-path checkpoints/llava-v1.5-7b-merged

The LoRA folder holds the adapter and `non_lora_trainables.bin` (projector,
image_newline, an unfrozen tower, the tower's LoRA branches);
`load_pretrained_model` applies both and merges the adapter. A vision-tower
LoRA (`--mm_vision_lora_enable`) is merged into the tower too, with or
without an LLM LoRA (then no `--model-base`). The result is a plain
checkpoint that loads with `load_pretrained_model(path, None, ...)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def merge_lora(args) -> Path:
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    device = args.device or "cpu"
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), device=device, torch_dtype=dtype
    )
    out = Path(args.save_model_path)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if image_processor is not None:
        image_processor.save_pretrained(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=str, required=True, help="the LoRA checkpoint folder (train.py output)")
    parser.add_argument("--model-base", type=str, default=None,
                        help="the LLM folder an LLM-LoRA run started from (omit for a full-LLM checkpoint whose "
                             "vision tower trained through LoRA)")
    parser.add_argument("--save-model-path", type=str, required=True, help="where to write the merged checkpoint")
    parser.add_argument("--device", type=str, default=None, help="cpu (default) or cuda")
    parser.add_argument("--dtype", type=str, default=None, help="saved weights dtype: float16 on cuda, float32 on cpu by default")
    merge_lora(parser.parse_args(argv))


if __name__ == "__main__":
    main()
