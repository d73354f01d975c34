"""Upstream clients, run verbatim on a quick-start-like tiny checkpoint on CPU.

LLaVA's eval scripts and CLI and the LLaVA-NeXT README snippet are vendored
unchanged under tests/fixtures/upstream (SOURCE.md there) and run in a
subprocess whose only help is tests/fixtures/upstream/cuda_to_cpu: their own
`.cuda()` calls land on the CPU. `load_pretrained_model` is called with
LLaVA's defaults (device "cuda", device_map "auto") and must fall back to
the CPU itself. Each client must exit 0 and write what it writes for LLaVA.
Our own `llava.eval` scripts must give the same answers as LLaVA's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_support import build_checkpoint, demo_images, write_mmbench_tsv, write_questions

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO / "tests" / "fixtures" / "upstream"
SHIM = UPSTREAM / "cuda_to_cpu"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir, tiny_clip_dir, tokenizers):
    root = tmp_path_factory.mktemp("clients")
    ckpt = build_checkpoint(root / "finetune", tiny_llama_dir, tiny_clip_dir, tokenizers("llama2"), stop=True)
    build_checkpoint(root / "random", tiny_llama_dir, tiny_clip_dir, tokenizers("llama2"))
    images = demo_images(root / "images", 2)
    write_questions(root / "questions.jsonl", images)
    write_mmbench_tsv(root / "mmbench.tsv", root / "images", images)
    science = [{"id": f"sqa{i}", "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?\nA. red\nB. blue"}, {"from": "gpt", "value": "A"}]}
        for i, (name, _) in enumerate(images)] + [{"id": "sqa_text", "conversations": [
            {"from": "human", "value": "Is the sky blue?\nA. yes\nB. no"}, {"from": "gpt", "value": "A"}]}]
    (root / "science.json").write_text(json.dumps(science))
    return root, ckpt, images


def run(script: Path, *args, stdin: str = "", env_extra=None, timeout=600) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    done = subprocess.run([sys.executable, str(script), *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=script.parent)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stderr[-3000:]}"
    assert "CUDA is not available: loading on the CPU in float32" in done.stderr  # the one warning
    return done.stdout


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("script", [pytest.param("model_vqa", marks=pytest.mark.slow), "model_vqa_loader"])
def test_llava_vqa_scripts(workspace, script):
    """model_vqa generates up to 1024 tokens: the checkpoint that answers and stops; the loader takes
    --max_new_tokens, so the random checkpoint, whose long answers must equal ours exactly."""
    root, ckpt, images = workspace
    ckpt = ckpt if script == "model_vqa" else root / "random"
    out = root / f"{script}.jsonl"
    run(UPSTREAM / "llava" / "eval" / f"{script}.py", "--model-path", ckpt, "--question-file",
        root / "questions.jsonl", "--image-folder", root / "images", "--answers-file", out, "--temperature", "0",
        "--conv-mode", "vicuna_v1", *(["--max_new_tokens", "12"] if script == "model_vqa_loader" else []))
    answers = read_answers(out)
    assert [a["question_id"] for a in answers] == list(range(len(images)))
    assert all(a["model_id"] == ckpt.name and a["text"] for a in answers)
    if script == "model_vqa_loader":  # ours, same flags, batched: the same answers
        from llava.eval import model_vqa_loader

        mine = root / "ours.jsonl"
        model_vqa_loader.main(["--model-path", str(ckpt), "--question-file", str(root / "questions.jsonl"),
                               "--image-folder", str(root / "images"), "--answers-file", str(mine),
                               "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "12",
                               "--batch-size", "2", "--device", "cpu"])
        assert [a["text"] for a in read_answers(mine)] == [a["text"] for a in answers]


@pytest.mark.slow
def test_llava_mmbench_and_science_scripts(workspace):
    root, ckpt, images = workspace
    run(UPSTREAM / "llava" / "eval" / "model_vqa_mmbench.py", "--model-path", ckpt, "--question-file",
        root / "mmbench.tsv", "--answers-file", root / "mmbench.jsonl", "--single-pred-prompt", "--all-rounds",
        "--temperature", "0", "--conv-mode", "vicuna_v1")
    answers = read_answers(root / "mmbench.jsonl")
    assert len(answers) == 4 * len(images) and answers[1]["option_char"] == ["B", "C", "D", "A"]
    run(UPSTREAM / "llava" / "eval" / "model_vqa_science.py", "--model-path", ckpt, "--question-file",
        root / "science.json", "--image-folder", root / "images", "--answers-file", root / "science.jsonl",
        "--single-pred-prompt", "--temperature", "0", "--conv-mode", "vicuna_v1")
    assert [a["question_id"] for a in read_answers(root / "science.jsonl")] == ["sqa0", "sqa1", "sqa_text"]


@pytest.mark.parametrize("conv_mode", [None, pytest.param("vicuna_v1", marks=pytest.mark.slow)])
def test_llava_run_llava(workspace, conv_mode):
    root, ckpt, images = workspace
    args = ["--model-path", ckpt, "--image-file", root / "images" / images[0][0], "--query",
            "What colour is the shape?", "--temperature", "0", "--max_new_tokens", "8"]
    out = run(UPSTREAM / "llava" / "eval" / "run_llava.py", *args,
              *(["--conv-mode", conv_mode] if conv_mode else []))
    assert out.strip().splitlines()[-1] == "red"  # without --conv-mode LLaVA guesses llava_v0: it exists now


@pytest.mark.slow
def test_llava_serve_cli(workspace):
    root, ckpt, images = workspace
    out = run(UPSTREAM / "llava" / "serve" / "cli.py", "--model-path", ckpt, "--image-file",
              root / "images" / images[0][0], "--temperature", "0", "--max-new-tokens", "8",
              stdin="What colour is the shape?\nAre you sure?\n")
    assert out.count("Assistant: ") == 2 and out.rstrip().endswith("exit...")


def test_llava_next_readme_snippet(workspace, tmp_path, tiny_llama3_dir, tiny_clip_dir, tokenizers):
    root, _, images = workspace
    ckpt = build_checkpoint(tmp_path / "llava-llama3-tiny", tiny_llama3_dir, tiny_clip_dir, tokenizers("llama3"),
                            stop=True)
    snippet = (UPSTREAM / "llava_next" / "readme_snippet.py").read_text()
    script = tmp_path / "readme_snippet.py"  # the model path is the one line a user changes
    script.write_text(snippet.replace('pretrained = "lmms-lab/llama3-llava-next-8b"', f'pretrained = "{ckpt}"'))
    out = run(script, env_extra={"LLAVA_TEST_IMAGE": str(root / "images" / images[0][0])})
    assert out.strip() == "['red']"  # print(text_outputs)
