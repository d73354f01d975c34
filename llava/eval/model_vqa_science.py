"""ScienceQA answers: LLaVA's `model_vqa_science.py` command line.

    python -m llava.eval.model_vqa_science --model-path CKPT --question-file llava_test_CQM-A.json \\
        --image-folder scienceqa/images/test --answers-file answers.jsonl --single-pred-prompt \\
        --temperature 0 --conv-mode vicuna_v1

Questions: a JSON list of LLaVA samples (`id`, optional `image`, the first
turn of `conversations` holds the question with its options). Questions
without an image are asked as text only.
"""

from __future__ import annotations

import argparse
import json
import os

from PIL import Image
from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.engine import Answerer, add_model_args, answer_record, get_chunk, open_answers

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def eval_model(args):
    answerer = Answerer(args)
    with open(os.path.expanduser(args.question_file), encoding="utf-8") as f:
        questions = get_chunk(json.load(f), args.num_chunks, args.chunk_idx)
    items, prompts = [], []
    for line in questions:
        question = line["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        image = None
        if "image" in line:
            image = Image.open(os.path.join(args.image_folder, line["image"])).convert("RGB")
        shown = (DEFAULT_IMAGE_TOKEN + "\n" if image is not None else "") + question
        if args.single_pred_prompt:
            question, shown = question + "\n" + SINGLE_PRED_PROMPT, shown + "\n" + SINGLE_PRED_PROMPT
        items.append((question, image))
        prompts.append(shown)
    with tqdm(total=len(items), disable=None) as progress:
        answers = answerer.answer_all(items, args.batch_size, progress)
    with open_answers(args.answers_file) as out:
        for line, prompt, text in zip(questions, prompts, answers):
            out.write(answer_record(line["id"], prompt, text, answerer.model_name))


def parse_args(argv=None):
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter),
                            conv_mode="llava_v0")
    parser.add_argument("--image-folder", type=str, default="", help="folder of the questions' images")
    parser.add_argument("--question-file", type=str, required=True, help="ScienceQA questions (JSON list)")
    parser.add_argument("--answers-file", type=str, required=True, help="where the answers JSONL goes")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for LLaVA's scripts; unused")
    return parser.parse_args(argv)


def main(argv=None):
    eval_model(parse_args(argv))


if __name__ == "__main__":
    main()
