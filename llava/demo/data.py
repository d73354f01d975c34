"""A synthetic image task for the CPU quick start: name the colour of the shape.

The question is always the same, so the text alone carries no information:
only the image tells the answer. Images vary in size and aspect ratio (so
anyres picks different tile grids), background shade, shape kind, position
and size; the colour is the one thing the answer depends on. Held-out images
come from a different seed. A blank image of the same size (no shape) is the
"blind" control: a model that reads the image cannot beat chance on it.

    python -m llava.demo.data --out demo_runs/tiny/data --train 640 --test 120
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "white": (245, 245, 245),
}
"""Answer word -> RGB. Six answers: chance is 1/6."""

SHAPES = ("circle", "square", "triangle")
QUESTION = "What colour is the shape?"
# (width, height) choices: square, wide and tall, so anyres uses several grids
SIZES = ((64, 64), (112, 56), (56, 112), (96, 72), (72, 96), (128, 64))


def draw_sample(rng: random.Random, colour: str | None, size: tuple[int, int]) -> Image.Image:
    """One image of PIL size `(width, height)`; `colour=None` draws only the background."""
    width, height = size
    shade = rng.randint(40, 110)  # dark grey, never one of the answer colours
    image = Image.new("RGB", size, (shade, shade, shade))
    if colour is None:
        return image
    side = rng.randint(int(0.6 * min(size)), int(0.95 * min(size)))  # large: the colour dominates every tile
    left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    box = [left, top, left + side - 1, top + side - 1]
    draw = ImageDraw.Draw(image)
    kind = rng.choice(SHAPES)
    fill = COLOURS[colour]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(left + side / 2, top), (left, top + side - 1), (left + side - 1, top + side - 1)], fill=fill)
    return image


def make_split(out: Path, name: str, count: int, seed: int) -> list[dict]:
    """Write `count` images and their samples; colours cycle so every answer is equally frequent."""
    rng = random.Random(seed)
    folder = out / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    answers = list(COLOURS)
    samples = []
    for i in range(count):
        colour = answers[i % len(answers)]
        size = rng.choice(SIZES)
        rel = f"{name}/{i:05d}.png"
        draw_sample(rng, colour, size).save(out / "images" / rel)
        samples.append({"id": f"{name}-{i:05d}", "image": rel, "answer": colour, "size": list(size)})
    rng.shuffle(samples)
    return samples


def caption_sample(sample: dict) -> dict:
    """Pretrain (plain template): the image, then a one-line caption naming the colour."""
    return {
        "id": sample["id"],
        "image": sample["image"],
        "conversations": [
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": f"A {sample['answer']} shape."},
        ],
    }


def question_sample(sample: dict) -> dict:
    """Finetune (v1 template): the fixed question, answered with the colour word."""
    return {
        "id": sample["id"],
        "image": sample["image"],
        "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"},
            {"from": "gpt", "value": sample["answer"]},
        ],
    }


def build(out, train: int = 640, test: int = 120, seed: int = 0, pretrain: int = 240) -> dict:
    """Write images, pretrain.json, finetune.json and test.json under `out`; return their paths.

    Pretraining only aligns the projector, so it captions the first `pretrain`
    training images; finetuning asks about all `train` of them.
    """
    out = Path(out)
    train_samples = make_split(out, "train", train, seed)
    test_samples = make_split(out, "test", test, seed + 1)
    paths = {
        "pretrain": out / "pretrain.json",
        "finetune": out / "finetune.json",
        "test": out / "test.json",
        "image_folder": out / "images",
    }
    paths["pretrain"].write_text(json.dumps([caption_sample(s) for s in train_samples[:pretrain]], indent=1))
    paths["finetune"].write_text(json.dumps([question_sample(s) for s in train_samples], indent=1))
    paths["test"].write_text(json.dumps(test_samples, indent=1))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for images/ and the JSON files")
    parser.add_argument("--train", type=int, default=640, help="training images (finetune asks about all of them)")
    parser.add_argument("--pretrain", type=int, default=240, help="how many of them pretraining captions")
    parser.add_argument("--test", type=int, default=120, help="held-out images, from another seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split (test uses seed + 1)")
    args = parser.parse_args(argv)
    paths = build(args.out, args.train, args.test, args.seed, args.pretrain)
    print(f"demo data: {args.train} train / {args.test} test images, {len(COLOURS)} answers -> {args.out}")
    return paths


if __name__ == "__main__":
    main()
