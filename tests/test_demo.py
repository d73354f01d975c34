"""The CPU quick start: its synthetic task, its evaluator, and (slow) the whole demo.sh run."""

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.demo.data import COLOURS, QUESTION, build, draw_sample
from llava.demo.evaluate import first_word

ROOT = Path(__file__).resolve().parent.parent
DEMO_LINE = re.compile(r"^demo: accuracy=([0-9.]+) blind_accuracy=([0-9.]+) chance=([0-9.]+)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_data")
    build(out, train=60, test=24, seed=5)
    return out


def test_task_needs_the_image(data):
    """Same question everywhere, balanced answers (chance <= 1/4), the colour only in the pixels."""
    train = json.loads((data / "finetune.json").read_text())
    questions = {s["conversations"][0]["value"] for s in train}
    assert questions == {f"<image>\n{QUESTION}"}
    answers = Counter(s["conversations"][1]["value"] for s in train)
    assert set(answers) == set(COLOURS) and len(COLOURS) >= 4
    assert max(answers.values()) - min(answers.values()) <= 1
    pretrain = json.loads((data / "pretrain.json").read_text())
    assert [s["image"] for s in pretrain] == [s["image"] for s in train][: len(pretrain)] and len(pretrain) == 60
    assert all(s["conversations"][0]["value"] == "<image>" for s in pretrain)


def test_images_show_their_colour_and_splits_differ(data):
    test = json.loads((data / "test.json").read_text())
    for sample in test[:12]:
        pixels = np.asarray(Image.open(data / "images" / sample["image"]).convert("RGB")).reshape(-1, 3)
        assert Image.open(data / "images" / sample["image"]).size == tuple(sample["size"])
        hits = (np.abs(pixels.astype(int) - COLOURS[sample["answer"]]).sum(1) < 10).mean()
        assert hits > 0.05, sample  # a good share of the picture is the answer colour
    train_bytes = {(data / "images" / f"train/{i:05d}.png").read_bytes() for i in range(60)}
    assert not any((data / "images" / s["image"]).read_bytes() in train_bytes for s in test)


def test_blank_image_has_no_answer_colour():
    import random

    blank = np.asarray(draw_sample(random.Random(0), None, (80, 40))).reshape(-1, 3).astype(int)
    assert blank.shape == (3200, 3) and len(np.unique(blank, axis=0)) == 1
    for rgb in COLOURS.values():
        assert np.abs(blank - rgb).sum(1).min() > 60


@pytest.mark.parametrize("text,word", [(" red</s>", "red"), ("Blue.", "blue"), ("", ""), ("  green shape", "green")])
def test_first_word(text, word):
    assert first_word(text) == word


@pytest.mark.slow
def test_demo_sh_learns_and_reads_the_image(tmp_path):
    """Acceptance 3: the quick start, end to end on CPU, within 15 minutes."""
    env = dict(os.environ, WORK=str(tmp_path / "work"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", "scripts/next/tiny/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=15 * 60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = DEMO_LINE.match(last)
    assert match, last
    accuracy, blind, chance = map(float, match.groups())
    assert chance == pytest.approx(1 / len(COLOURS), abs=1e-3)
    assert accuracy >= 0.9, last
    assert blind <= chance + 0.1, last
    assert "check: max_abs_logit_diff=" in proc.stdout and "tokens_equal=True" in proc.stdout
