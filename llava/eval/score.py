"""Benchmark scores from answers files: `python -m llava.eval.score BENCHMARK ...`.

- `mmbench`: dev accuracy, circular (a question counts only if every rotation
  is answered right), plus the submission file for the test split;
- `textvqa`: VQA accuracy against the 10 human answers (EvalAI normalisation);
- `pope`: accuracy, precision, recall, F1 and yes-ratio per category;
- `sqa`: ScienceQA accuracy, overall and on questions with an image (IMG);
- `gqa`: exact-match accuracy, and the predictions file GQA's own eval reads.

Each prints one line per result and returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import re
import string
from collections import defaultdict
from pathlib import Path

from llava.eval.model_vqa_mmbench import ALL_OPTIONS, read_tsv


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- multiple choice


def parse_letter(text: str, options: list[str]) -> str | None:
    """The option letter an answer names: "B", "B.", "(B) ...", "The answer is B.", or an option's exact text."""
    letters = list(string.ascii_uppercase[: len(options)])
    text = text.strip()
    match = re.match(r"^\(?([A-Z])(?:[).:]|\s|$)", text)
    if match and match.group(1) in letters:
        return match.group(1)
    found = re.findall(r"answer is \(?([A-Z])\b", text)
    if len(found) == 1 and found[0] in letters:
        return found[0]
    for letter, option in zip(letters, options):
        if text.lower().rstrip(".") == str(option).strip().lower():
            return letter
    return None


def mmbench(question_file, result_file, submission_file=None) -> dict:
    """Circular accuracy on a dev TSV (needs `answer`); writes round 0's predictions as a submission TSV."""
    rows = {str(r["index"]): r for r in read_tsv(question_file)}
    by_question = defaultdict(list)
    for answer in read_jsonl(result_file):
        by_question[str(answer["question_id"])].append(answer)
    correct, unparsed, categories = 0, 0, defaultdict(lambda: [0, 0])
    for index, answers in by_question.items():
        row = rows[index]
        ok = True
        for answer in answers:
            shown = parse_letter(answer["text"], answer["options"])
            unparsed += shown is None
            original = None if shown is None else answer["option_char"][ALL_OPTIONS.index(shown)]
            ok = ok and original == row.get("answer")
        correct += ok
        categories[row.get("category", "")][0] += ok
        categories[row.get("category", "")][1] += 1
    if submission_file:
        write_mmbench_submission(rows, by_question, submission_file)
    total = len(by_question)
    result = {"accuracy": correct / max(total, 1), "questions": total, "unparsed_answers": unparsed,
              "categories": {k: v[0] / v[1] for k, v in sorted(categories.items())}}
    print(f"mmbench: circular accuracy {result['accuracy']:.4f} on {total} questions ({unparsed} unparsed answers)")
    return result


def write_mmbench_submission(rows, by_question, path):
    """MMBench's upload columns (index, question, options, prediction) as TSV, round 0's answer text."""
    header = ["index", "question", "hint", *ALL_OPTIONS, "prediction"]
    lines = ["\t".join(header)]
    for index, answers in by_question.items():
        row = rows[index]
        first = min(answers, key=lambda a: a.get("round_id", 0))
        values = [index, row["question"], row.get("hint", ""), *[row.get(k, "") for k in ALL_OPTIONS], first["text"]]
        lines.append("\t".join(str(v).replace("\t", " ").replace("\n", "\\n") for v in values))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def sqa(base_dir, result_file, split="test") -> dict:
    """ScienceQA accuracy; IMG accuracy over the problems whose prompt had an image."""
    base = Path(base_dir)
    pids = json.loads((base / "pid_splits.json").read_text())[split]
    problems = json.loads((base / "problems.json").read_text())
    predictions = {str(p["question_id"]): p for p in read_jsonl(result_file)}
    counts = {"all": [0, 0], "img": [0, 0]}
    for pid in pids:
        problem, pred = problems[pid], predictions.get(str(pid), {"text": "", "prompt": ""})
        letter = parse_letter(pred["text"], problem["choices"])
        ok = letter is not None and string.ascii_uppercase.index(letter) == problem["answer"]
        for key in ("all", "img") if "<image>" in pred["prompt"] else ("all",):
            counts[key][0] += ok
            counts[key][1] += 1
    result = {"accuracy": counts["all"][0] / max(counts["all"][1], 1),
              "img_accuracy": counts["img"][0] / max(counts["img"][1], 1), "questions": counts["all"][1]}
    print(f"sqa: accuracy {result['accuracy']:.4f}, IMG accuracy {result['img_accuracy']:.4f} "
          f"on {result['questions']} questions")
    return result


# ----------------------------------------------------------------------------- open answers

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's VQA answer normalisation (lower case, punctuation, number words, articles).

    Its table that restores apostrophes ("dont" -> "don't") is not applied:
    both sides go through this function, so only a pair spelled differently
    (one with, one without the apostrophe) scores differently.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    digit_commas = re.search(r"(?<=\d)(,)+(?=\d)", text) is not None
    for p in _PUNCT:
        spaced = (p + " " in text or " " + p in text) or digit_commas
        text = text.replace(p, "" if spaced else " ")
    text = re.sub(r"(?!<=\d)(\.)(?!\d)", "", text)
    words = [_NUMBERS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """VQA soft accuracy: mean over the 10 leave-one-out subsets of min(1, matches / 3)."""
    answers = [normalize_vqa_answer(a) for a in human_answers]
    pred = normalize_vqa_answer(prediction)
    scores = []
    for left_out in range(len(answers)):
        matches = sum(a == pred for i, a in enumerate(answers) if i != left_out)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def textvqa_question(prompt: str) -> str:
    """The question inside a TextVQA prompt (LLaVA's files add OCR tokens and an instruction line)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        return (match.group(1) if match else prompt).lower()
    if len(lines) == 3 and "Reference OCR token: " in prompt:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    return lines[0].lower()


def textvqa(annotation_file, result_file) -> dict:
    """TextVQA val accuracy; answers are matched to annotations by (image id, question)."""
    data = json.loads(Path(annotation_file).read_text())["data"]
    annotations = {(a["image_id"], a["question"].lower()): a for a in data}
    scores = []
    for result in read_jsonl(result_file):
        question = textvqa_question(result["prompt"])
        scores.append(vqa_accuracy(result["text"], annotations[(result["question_id"], question)]["answers"]))
    result = {"accuracy": sum(scores) / max(len(scores), 1), "questions": len(scores)}
    print(f"textvqa: accuracy {result['accuracy']:.4f} on {result['questions']} questions")
    return result


def yes_no(text: str) -> str:
    """POPE's reading of an answer: "no" if its first sentence has the word no/No/not, else "yes"."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def pope(annotation_dir, question_file, result_file) -> dict:
    """Per category (coco_pope_<category>.json label files): accuracy, precision, recall, F1, yes-ratio."""
    questions = {q["question_id"]: q for q in read_jsonl(question_file)}
    answers = {a["question_id"]: yes_no(a["text"]) for a in read_jsonl(result_file)}
    out = {}
    for label_file in sorted(Path(annotation_dir).glob("coco_pope_*.json")):
        category = label_file.stem.removeprefix("coco_pope_")
        labels = {q["question_id"]: q["label"] for q in read_jsonl(label_file)}
        pairs = [(answers[i], labels[i]) for i, q in questions.items()
                 if q.get("category") == category and i in answers and i in labels]
        tp = sum(p == "yes" and t == "yes" for p, t in pairs)
        fp = sum(p == "yes" and t != "yes" for p, t in pairs)
        tn = sum(p == "no" and t == "no" for p, t in pairs)
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + (len(pairs) - tp - fp - tn), 1)
        out[category] = {"accuracy": (tp + tn) / max(len(pairs), 1), "precision": precision, "recall": recall,
                         "f1": 2 * precision * recall / max(precision + recall, 1e-12),
                         "yes_ratio": (tp + fp) / max(len(pairs), 1), "questions": len(pairs)}
        print(f"pope {category}: " + " ".join(f"{k} {v:.4f}" for k, v in out[category].items() if k != "questions"))
    return out


def gqa(annotation_file, result_file, predictions_file=None) -> dict:
    """Exact match after lower-casing and dropping a final period (LLaVA's conversion for GQA's eval)."""
    questions = json.loads(Path(annotation_file).read_text())
    predictions = [{"questionId": r["question_id"], "prediction": r["text"].rstrip(".").lower()}
                   for r in read_jsonl(result_file)]
    if predictions_file:
        Path(predictions_file).write_text(json.dumps(predictions))
    hits = [p["prediction"] == str(questions[str(p["questionId"])]["answer"]).lower() for p in predictions]
    result = {"accuracy": sum(hits) / max(len(hits), 1), "questions": len(hits)}
    print(f"gqa: accuracy {result['accuracy']:.4f} on {result['questions']} questions")
    return result


# benchmark -> (help, the script whose answers it scores, {required flag: help}, {optional flag: (help, default)})
SCORERS = {
    "mmbench": ("circular accuracy on a dev TSV, and the submission file", "model_vqa_mmbench",
                {"--question-file": "the MMBench TSV the answers were made from"},
                {"--submission-file": ("where to write the upload TSV", None)}),
    "textvqa": ("VQA accuracy on TextVQA val", "model_vqa_loader", {"--annotation-file": "TextVQA_0.5.1_val.json"}, {}),
    "pope": ("accuracy / F1 per POPE category", "model_vqa_loader",
             {"--annotation-dir": "folder of coco_pope_<category>.json label files",
              "--question-file": "the questions JSONL (with 'category')"}, {}),
    "sqa": ("ScienceQA accuracy (and IMG accuracy)", "model_vqa_science",
            {"--base-dir": "folder with problems.json and pid_splits.json"}, {"--split": ("split in pid_splits.json", "test")}),
    "gqa": ("exact-match accuracy on GQA testdev", "model_vqa_loader",
            {"--annotation-file": "testdev_balanced_questions.json"},
            {"--predictions-file": ("where to write GQA's predictions JSON", None)}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (help_text, producer, required, optional) in SCORERS.items():
        p = sub.add_parser(name, help=help_text)
        for flag, flag_help in required.items():
            p.add_argument(flag, required=True, help=flag_help)
        p.add_argument("--result-file", required=True, help=f"{producer}'s answers JSONL")
        for flag, (flag_help, default) in optional.items():
            p.add_argument(flag, default=default, help=flag_help)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = vars(parse_args(argv))
    benchmark = args.pop("benchmark")
    return {"mmbench": mmbench, "textvqa": textvqa, "pope": pope, "sqa": sqa, "gqa": gqa}[benchmark](**args)


if __name__ == "__main__":
    main()
