"""MMBench / CCBench answers: LLaVA's `model_vqa_mmbench.py` command line.

    python -m llava.eval.model_vqa_mmbench --model-path CKPT --question-file mmbench_dev_20230712.tsv \\
        --answers-file answers.jsonl --single-pred-prompt --all-rounds --temperature 0 --conv-mode vicuna_v1

The TSV has one question per row: `index`, `question`, optional `hint`, the
options in columns `A`..`D` (empty when a question has fewer), the image as
base64 in `image`, and for dev splits `answer`. The prompt is the hint, the
question and "A. option" lines. With `--all-rounds` each question is asked
once per option, the options rotated each time (MMBench's circular
evaluation); every answer line records the rotation (`options`,
`option_char`: the original letter shown at each position), which is what
`python -m llava.eval.score mmbench` reads.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

from tqdm import tqdm

from llava.eval.engine import Answerer, add_model_args, answer_record, get_chunk, open_answers
from llava.mm_utils import load_image_from_base64

ALL_OPTIONS = ["A", "B", "C", "D"]
SINGLE_PRED_PROMPT = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


def is_none(value) -> bool:
    """LLaVA's test for an empty TSV cell: missing, NaN, '', 'nan' or 'none'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def read_tsv(path) -> list[dict]:
    """Rows of an MMBench TSV as dicts (fields are large: base64 images)."""
    csv.field_size_limit(sys.maxsize)
    with open(os.path.expanduser(path), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def get_options(row: dict) -> list[str]:
    """The row's options in order, up to the first empty one."""
    options = []
    for letter in ALL_OPTIONS:
        if is_none(row.get(letter)):
            break
        options.append(row[letter])
    return options


def question_text(row: dict, options: list[str]) -> str:
    """Hint, question, then "A. option" lines (the shown letters are always A, B, ...)."""
    text = row["question"] if is_none(row.get("hint")) else row["hint"] + "\n" + row["question"]
    for letter, option in zip(ALL_OPTIONS, options):
        text += "\n" + letter + ". " + option
    return text


def rounds(row: dict, all_rounds: bool):
    """(round_id, options shown, original letter of each shown position), rotated by one per round."""
    options = get_options(row)
    letters = ALL_OPTIONS[: len(options)]
    for round_id in range(len(options) if all_rounds else 1):
        yield round_id, options, letters
        options, letters = options[1:] + options[:1], letters[1:] + letters[:1]


def eval_model(args):
    answerer = Answerer(args)
    rows = get_chunk(read_tsv(args.question_file), args.num_chunks, args.chunk_idx)
    jobs, items = [], []
    for row in rows:
        image = load_image_from_base64(row["image"]).convert("RGB")
        for round_id, options, letters in rounds(row, args.all_rounds):
            shown = question_text(row, options)
            asked = shown + ("\n" + SINGLE_PRED_PROMPT[args.lang] if args.single_pred_prompt else "")
            jobs.append((row, round_id, shown, options, letters))
            items.append((asked, image))
    with tqdm(total=len(items), disable=None) as progress:
        answers = answerer.answer_all(items, args.batch_size, progress)
    with open_answers(args.answers_file) as out:
        for (row, round_id, shown, options, letters), text in zip(jobs, answers):
            question_id = int(row["index"]) if str(row["index"]).lstrip("-").isdigit() else row["index"]
            out.write(answer_record(question_id, shown, text, answerer.model_name, round_id=round_id,
                                    options=options, option_char=letters))


def parse_args(argv=None):
    parser = add_model_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--question-file", type=str, required=True, help="the MMBench / CCBench TSV")
    parser.add_argument("--answers-file", type=str, required=True, help="where the answers JSONL goes")
    parser.add_argument("--image-folder", type=str, default="", help="unused (images are in the TSV); LLaVA's flag")
    parser.add_argument("--all-rounds", action="store_true", help="circular evaluation: one round per option")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    parser.add_argument("--lang", type=str, default="en", choices=sorted(SINGLE_PRED_PROMPT),
                        help="language of the single-prediction instruction")
    return parser.parse_args(argv)


def main(argv=None):
    eval_model(parse_args(argv))


if __name__ == "__main__":
    main()
