"""Ask one question about one or more images: LLaVA's `run_llava.py` command line.

    python -m llava.eval.run_llava --model-path CKPT --image-file photo.jpg --query "What is this?"

`<image-placeholder>` in the query marks where the images go; without it they
go first. Without `--conv-mode` the template is guessed from the folder name
as LLaVA does, and our checkpoints (whose names LLaVA's rule does not know)
get the one their tokenizer suggests instead of LLaVA's `llava_v0` fallback.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.eval.engine import Answerer
from llava.export.chat_template import guess_conv_mode
from llava.serve.cli import load_image


def conv_mode_from_name(model_name: str) -> str | None:
    """LLaVA's guess from the model name; None where LLaVA would fall back to `llava_v0`."""
    name = model_name.lower()
    for key, mode in (("llama-2", "llava_llama_2"), ("mistral", "mistral_instruct"), ("v1.6-34b", "chatml_direct"),
                      ("v1", "llava_v1"), ("mpt", "mpt")):
        if key in name:
            return mode
    return None


def eval_model(args) -> str:
    answerer = Answerer(args)
    guessed = conv_mode_from_name(answerer.model_name) or guess_conv_mode(answerer.tokenizer)
    if args.conv_mode is not None and args.conv_mode != guessed:
        print(f"[WARNING] the auto inferred conversation mode is {guessed}, while `--conv-mode` is "
              f"{args.conv_mode}, using {args.conv_mode}", file=sys.stderr)
    answerer.conv_mode = args.conv_mode or guessed
    images = [load_image(path) for path in args.image_file.split(args.sep)]
    marker = DEFAULT_IMAGE_TOKEN
    if getattr(answerer.model.config, "mm_use_im_start_end", False):
        marker = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    query = args.query
    if IMAGE_PLACEHOLDER in query:
        query = re.sub(re.escape(IMAGE_PLACEHOLDER), marker, query)
    else:
        query = "\n".join([marker] * len(images) + [query])
    answer = answerer.answer_prompts([(answerer.chat_prompt(query), images)])[0]
    print(answer)
    return answer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=str, required=True, help="checkpoint folder")
    parser.add_argument("--model-base", type=str, default=None, help="base LLM of a LoRA / projector-only checkpoint")
    parser.add_argument("--image-file", type=str, required=True, help="image path(s), separated by --sep")
    parser.add_argument("--query", type=str, required=True, help="the question")
    parser.add_argument("--conv-mode", type=str, default=None, help="template (default: guessed)")
    parser.add_argument("--sep", type=str, default=",", help="separator between image paths")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="longest answer, in tokens")
    parser.add_argument("--device", type=str, default=None, help="cuda, cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    args.batch_size, args.num_chunks, args.chunk_idx = 1, 1, 0
    return args


def main(argv=None):
    with torch.inference_mode():
        return eval_model(parse_args(argv))


if __name__ == "__main__":
    main()
