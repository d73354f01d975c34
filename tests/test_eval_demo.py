"""Acceptance: the quick start's model scores >= 0.9 on an MMBench-style TSV of its task, blank images near chance.

Slow: trains the quick start's model once (pretrain.sh + finetune.sh, a few
CPU minutes) unless LLAVA_DEMO_CHECKPOINT names one already trained. The TSV
asks the demo question about held-out images with 4 colour options (the
right one among them), circular (`--all-rounds`); answers go through
`model_vqa_mmbench` and `python -m llava.eval.score mmbench`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from eval_support import write_mmbench_tsv
from llava.demo.data import draw_sample
from llava.eval import model_vqa_mmbench, score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint folder, demo data folder)."""
    if os.environ.get("LLAVA_DEMO_CHECKPOINT"):
        ckpt = Path(os.environ["LLAVA_DEMO_CHECKPOINT"])
        return ckpt, ckpt.parent / "data"
    work = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, WORK=str(work), HF_HUB_OFFLINE="1")
    for step in (["python", "-m", "llava.demo.prepare", "--work", str(work)],
                 ["bash", "scripts/next/tiny/pretrain.sh"], ["bash", "scripts/next/tiny/finetune.sh"]):
        proc = subprocess.run(step, cwd=ROOT, env=env, capture_output=True, text=True, timeout=20 * 60)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return work / "finetune", work / "data"


def circular_accuracy(ckpt, tsv, tmp_path) -> dict:
    out = tmp_path / f"{tsv.stem}.jsonl"
    model_vqa_mmbench.main(["--model-path", str(ckpt), "--question-file", str(tsv), "--answers-file", str(out),
                            "--all-rounds", "--temperature", "0", "--max_new_tokens", "4", "--conv-mode", "v1",
                            "--batch-size", "16", "--device", "cpu"])
    return score.main(["mmbench", "--question-file", str(tsv), "--result-file", str(out)])


@pytest.mark.slow
def test_demo_model_on_mmbench_tsv(trained, tmp_path):
    ckpt, data = trained
    test = json.loads((data / "test.json").read_text())[:60]
    images = [(s["image"], s["answer"]) for s in test]
    seeing = circular_accuracy(ckpt, write_mmbench_tsv(tmp_path / "seeing.tsv", data / "images", images), tmp_path)
    assert seeing["accuracy"] >= 0.9, seeing
    blank_dir = tmp_path / "blank"
    rng = random.Random(7)
    for name, _ in images:
        (blank_dir / name).parent.mkdir(parents=True, exist_ok=True)
        draw_sample(rng, None, Image.open(data / "images" / name).size).save(blank_dir / name)
    blind = circular_accuracy(ckpt, write_mmbench_tsv(tmp_path / "blank.tsv", blank_dir, images), tmp_path)
    assert blind["accuracy"] <= 0.25 + 0.15, blind  # chance: one of 4 options
