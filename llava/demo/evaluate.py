"""Step 5 of the quick start: ask the converted transformers model about held-out images.

Only transformers' public API is used (`AutoProcessor`, the chat template
the converter wrote, `LlavaNextForConditionalGeneration.generate`), so this is
what a user of the converted folder gets. Each held-out image is asked the
fixed question; then the same question is asked with a blank image of the
same size (the "blind" run). A model that really reads the image scores high
on the first and about chance on the second. The last line printed is

    demo: accuracy=<acc> blind_accuracy=<acc with blank images> chance=<1/answers>

    python -m llava.demo.evaluate --model-path demo_runs/tiny/finetune-hf --data demo_runs/tiny/data
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

from PIL import Image

from llava.demo.data import COLOURS, QUESTION, draw_sample


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def ask(model, processor, image, max_new_tokens: int = 4) -> str:
    """The model's reply to the fixed question about `image`, greedy."""
    import torch

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def evaluate(model_path, data_dir, limit: int | None = None, seed: int = 0) -> dict:
    """Accuracy on the held-out split, with and without the image content."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32, local_files_only=True)
    processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
    model.eval()
    data_dir = Path(data_dir)
    samples = json.loads((data_dir / "test.json").read_text())[:limit]
    rng = random.Random(seed)
    correct = blind_correct = 0
    for sample in samples:
        image = Image.open(data_dir / "images" / sample["image"]).convert("RGB")
        correct += first_word(ask(model, processor, image)) == sample["answer"]
        blank = draw_sample(rng, None, image.size)  # the same background, no shape
        blind_correct += first_word(ask(model, processor, blank)) == sample["answer"]
    n = len(samples)
    return {"accuracy": correct / n, "blind_accuracy": blind_correct / n, "chance": 1 / len(COLOURS), "n": n}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="the converted transformers folder")
    parser.add_argument("--data", required=True, help="the demo data folder (test.json, images/)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out images")
    args = parser.parse_args(argv)
    result = evaluate(args.model_path, args.data, args.limit)
    print(f"demo: {result['n']} held-out images")
    print(f"demo: accuracy={result['accuracy']:.3f} blind_accuracy={result['blind_accuracy']:.3f} "
          f"chance={result['chance']:.3f}")
    return result


if __name__ == "__main__":
    main()
