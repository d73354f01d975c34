"""Our `llava.eval` scripts: batched answers equal batch 1, chunks, MMBench rounds, and the scorers' numbers."""

from __future__ import annotations

import json

import pytest

from eval_support import build_checkpoint, demo_images, write_mmbench_tsv, write_questions
from llava.eval import model_vqa_loader, model_vqa_mmbench, score
from llava.eval.engine import get_chunk, split_list


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir, tiny_clip_dir, tokenizers):
    root = tmp_path_factory.mktemp("eval")
    ckpt = build_checkpoint(root / "random", tiny_llama_dir, tiny_clip_dir, tokenizers("llama2"))
    images = demo_images(root / "images", 5)
    write_questions(root / "questions.jsonl", images)
    return root, ckpt, images


def loader(root, ckpt, out, *extra):
    model_vqa_loader.main(["--model-path", str(ckpt), "--question-file", str(root / "questions.jsonl"),
                           "--image-folder", str(root / "images"), "--answers-file", str(out), "--temperature", "0",
                           "--conv-mode", "vicuna_v1", "--max_new_tokens", "10", "--device", "cpu", *extra])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_batched_answers_equal_batch_1(workspace):
    """Five questions on images of four sizes (different tile grids) in batches of 3: left padding is exact."""
    root, ckpt, images = workspace
    one = loader(root, ckpt, root / "b1.jsonl")
    three = loader(root, ckpt, root / "b3.jsonl", "--batch-size", "3")
    assert [a["text"] for a in three] == [a["text"] for a in one]
    assert len({a["text"] for a in one}) > 1  # the answers depend on the image: the comparison can fail
    assert [a["question_id"] for a in three] == list(range(len(images)))


def test_chunks_cover_the_questions_once(workspace):
    root, ckpt, _ = workspace
    parts = [loader(root, ckpt, root / f"c{k}.jsonl", "--num-chunks", "2", "--chunk-idx", str(k)) for k in (0, 1)]
    assert [a["question_id"] for a in parts[0] + parts[1]] == [0, 1, 2, 3, 4]
    assert split_list(list(range(5)), 2) == [[0, 1, 2], [3, 4]] and get_chunk([1], 4, 3) == []


def test_mmbench_rounds_and_circular_score(workspace, tmp_path):
    root, ckpt, images = workspace
    tsv = write_mmbench_tsv(tmp_path / "mm.tsv", root / "images", images[:2])
    out = tmp_path / "answers.jsonl"
    model_vqa_mmbench.main(["--model-path", str(ckpt), "--question-file", str(tsv), "--answers-file", str(out),
                            "--all-rounds", "--single-pred-prompt", "--temperature", "0", "--max_new_tokens", "2",
                            "--conv-mode", "vicuna_v1", "--batch-size", "4", "--device", "cpu"])
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["question_id"], a["round_id"]) for a in answers] == [(1000, r) for r in range(4)] + [
        (1001, r) for r in range(4)]
    assert [a["option_char"] for a in answers[:4]] == [list("ABCD"), list("BCDA"), list("CDAB"), list("DABC")]
    assert answers[1]["prompt"].split("\n")[1] == "A. " + answers[0]["options"][1]
    # score: rewrite the texts as a model that is right in every round except question 1001's last one
    rows = {r["index"]: r for r in model_vqa_mmbench.read_tsv(tsv)}
    for a in answers:
        right = a["option_char"].index(rows[str(a["question_id"])]["answer"])
        wrong = (right + 1) % 4
        a["text"] = "ABCD"[wrong if (a["question_id"], a["round_id"]) == (1001, 3) else right]
    out.write_text("".join(json.dumps(a) + "\n" for a in answers))
    result = score.main(["mmbench", "--question-file", str(tsv), "--result-file", str(out),
                         "--submission-file", str(tmp_path / "submission.tsv")])
    assert result["accuracy"] == 0.5 and result["questions"] == 2 and result["unparsed_answers"] == 0
    lines = (tmp_path / "submission.tsv").read_text().splitlines()
    assert lines[0].split("\t")[-1] == "prediction" and len(lines) == 3


def test_letter_parsing():
    options = ["red", "blue", "green", "white"]
    assert [score.parse_letter(t, options) for t in ["B", "B.", "(C) green", "The answer is D.", "Blue", "E", "maybe"]] \
        == ["B", "B", "C", "D", "B", None, None]


def test_vqa_accuracy_literal():
    humans = ["two"] * 2 + ["2"] + ["three"] * 7  # "two" and "2" normalise to the same answer
    assert score.vqa_accuracy("Two.", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 3 matches
    assert score.vqa_accuracy("three", humans) == pytest.approx(1.0)
    assert score.vqa_accuracy("2", ["2"] * 2 + ["x"] * 8) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert score.normalize_vqa_answer("The Dog's, bowl!") == "dog 's bowl"


def test_pope_sqa_gqa_literal(tmp_path):
    questions = [{"question_id": i, "category": "random", "text": "Is there a cat?"} for i in range(4)]
    labels = ["yes", "yes", "no", "no"]
    texts = ["Yes, there is.", "No.", "There is not a cat.", "Yes"]
    (tmp_path / "pope").mkdir()
    (tmp_path / "pope" / "coco_pope_random.json").write_text(
        "".join(json.dumps({"question_id": i, "label": label}) + "\n" for i, label in enumerate(labels)))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n"
                                              for i, t in enumerate(texts)))
    pope = score.main(["pope", "--annotation-dir", str(tmp_path / "pope"), "--question-file", str(tmp_path / "q.jsonl"),
                       "--result-file", str(tmp_path / "a.jsonl")])["random"]
    assert (pope["accuracy"], pope["precision"], pope["recall"], pope["f1"], pope["yes_ratio"]) == (0.5, 0.5, 0.5,
                                                                                                    0.5, 0.5)
    (tmp_path / "sqa").mkdir()
    (tmp_path / "sqa" / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    (tmp_path / "sqa" / "problems.json").write_text(json.dumps({
        "1": {"choices": ["a", "b"], "answer": 0}, "2": {"choices": ["a", "b", "c"], "answer": 2},
        "3": {"choices": ["a", "b"], "answer": 1}}))
    (tmp_path / "sqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": "1", "prompt": "<image>\nQ", "text": "A"}, {"question_id": "2", "prompt": "<image>\nQ",
                                                                   "text": "B"},
        {"question_id": "3", "prompt": "Q", "text": "The answer is B."}]))
    sqa = score.main(["sqa", "--base-dir", str(tmp_path / "sqa"), "--result-file", str(tmp_path / "sqa.jsonl")])
    assert (sqa["accuracy"], sqa["img_accuracy"]) == (pytest.approx(2 / 3), 0.5)
    (tmp_path / "gqa.json").write_text(json.dumps({"q1": {"answer": "left"}, "q2": {"answer": "red"}}))
    (tmp_path / "gqa.jsonl").write_text(json.dumps({"question_id": "q1", "text": "Left."}) + "\n" +
                                        json.dumps({"question_id": "q2", "text": "blue"}) + "\n")
    gqa = score.main(["gqa", "--annotation-file", str(tmp_path / "gqa.json"), "--result-file",
                      str(tmp_path / "gqa.jsonl"), "--predictions-file", str(tmp_path / "pred.json")])
    assert gqa["accuracy"] == 0.5
    assert json.loads((tmp_path / "pred.json").read_text())[0] == {"questionId": "q1", "prediction": "left"}


def test_device_map_auto_without_cuda_loads_on_cpu_fp32_with_one_warning(workspace):
    import warnings

    import torch

    from llava.model.builder import load_pretrained_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, ckpt, _ = workspace
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, model, _, _ = load_pretrained_model(ckpt, None, "random", device_map="auto")
    ours = [w for w in caught if "CUDA is not available" in str(w.message)]
    assert len(ours) == 1 and {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.device.type == "cpu"
    _, model, _, _ = load_pretrained_model(ckpt, None, "random", device_map="auto", multimodal=True,
                                           overwrite_config={"image_aspect_ratio": "pad"}, attn_implementation="sdpa")
    assert model.config.image_aspect_ratio == "pad"
    ids = torch.tensor([[1, 2, 3]])
    assert model.generate(ids, max_new_tokens=2, modalities=["image"], do_sample=False).shape == (1, 2)
    with pytest.raises(NotImplementedError, match="modalities \\['video'\\]"):
        model.generate(ids, max_new_tokens=2, modalities=["video"])


SCRIPTS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "scripts" / "next" / "eval").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_eval_scripts_parse(script):
    import subprocess

    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.slow
def test_textvqa_script_end_to_end(workspace, tmp_path):
    """scripts/next/eval/textvqa.sh on a tiny playground: chunks, merge, score."""
    import os
    import shutil
    import subprocess

    root, ckpt, images = workspace
    eval_dir = tmp_path / "eval"
    shutil.copytree(root / "images", eval_dir / "textvqa" / "train_images")
    questions = [{"question_id": name, "image": name, "text": "What colour is the shape?\nAnswer with one word."}
                 for name, _ in images]
    (eval_dir / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in questions))
    data = [{"image_id": name, "question": "What colour is the shape?", "answers": [colour] * 10}
            for name, colour in images]
    (eval_dir / "textvqa" / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    env = dict(os.environ, CKPT=str(ckpt), EVAL=str(eval_dir), CUDA_VISIBLE_DEVICES="0,1", HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", str(SCRIPTS[[s.stem for s in SCRIPTS].index("textvqa")])], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "textvqa: accuracy 0.0000 on 5 questions" in done.stdout  # a random model names no colour
    merged = (eval_dir / "textvqa" / "answers" / ckpt.name / "merge.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["question_id"] for line in merged) == sorted(name for name, _ in images)
