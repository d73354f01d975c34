"""Answer a question file about images: LLaVA's `model_vqa_loader.py` command line.

    python -m llava.eval.model_vqa_loader --model-path CKPT --question-file q.jsonl \\
        --image-folder images/ --answers-file answers/CKPT.jsonl --temperature 0 --conv-mode vicuna_v1

Questions: one JSON object per line, `{"question_id", "image", "text"}`.
Answers: one per line, `{"question_id", "prompt", "text", "answer_id",
"model_id", "metadata"}`, in question order. TextVQA, GQA, POPE, VQAv2,
VizWiz and MME use it (scripts/next/eval/).
"""

from __future__ import annotations

import argparse
import json
import os

from PIL import Image
from tqdm import tqdm

from llava.eval.engine import Answerer, add_model_args, answer_record, get_chunk, open_answers


def read_questions(path) -> list[dict]:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_model(args):
    answerer = Answerer(args)
    questions = get_chunk(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    items = []
    for line in questions:
        image = Image.open(os.path.join(args.image_folder, line["image"])).convert("RGB") if line.get("image") else None
        items.append((line["text"], image))
    with tqdm(total=len(items), disable=None) as progress:
        answers = answerer.answer_all(items, args.batch_size, progress)
    with open_answers(args.answers_file) as out:
        for line, text in zip(questions, answers):
            out.write(answer_record(line["question_id"], line["text"], text, answerer.model_name))


def parse_args(argv=None):
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--image-folder", type=str, default="", help="folder the questions' image paths are under")
    parser.add_argument("--question-file", type=str, required=True, help="questions, one JSON object per line")
    parser.add_argument("--answers-file", type=str, required=True, help="where the answers JSONL goes")
    return parser.parse_args(argv)


def main(argv=None):
    eval_model(parse_args(argv))


if __name__ == "__main__":
    main()
