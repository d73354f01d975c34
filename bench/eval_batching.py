"""Batched evaluation speed: `llava.eval` answers per second at --batch-size 1 and N, same answers.

    python bench/eval_batching.py --questions 32 --batch-size 8 --max-new-tokens 16

Builds a quick-start-sized random checkpoint (2-layer Llama-2-tokenizer LLM,
56-px CLIP tiles, anyres) in a temporary folder, asks the demo question
about demo images of four sizes, and times `Answerer.answer_all` at batch 1
and at `--batch-size` (greedy, fixed answer length: a random model never
stops early, so both runs generate the same number of tokens). Checks that
the answers are identical and prints both rates and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32, help="questions answered per run")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched run's batch size")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per answer")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from eval_support import build_checkpoint, demo_images
    from llava.demo.data import QUESTION
    from llava.demo.tiny import build_tiny_llm, build_tiny_vision_tower, load_vendored_tokenizer
    from llava.eval.engine import Answerer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        llm, clip = build_tiny_llm(root / "llm"), build_tiny_vision_tower(root / "clip", image_size=56)
        ckpt = build_checkpoint(root / "ckpt", llm, clip, load_vendored_tokenizer("llama2"))
        images = demo_images(root / "images", args.questions)
        items = [(QUESTION, Image.open(root / "images" / name).convert("RGB")) for name, _ in images]
        answerer = Answerer(SimpleNamespace(model_path=str(ckpt), model_base=None, conv_mode="vicuna_v1",
                                            temperature=0, top_p=None, num_beams=1,
                                            max_new_tokens=args.max_new_tokens, device=args.device))
        answerer.sampling["min_new_tokens"] = args.max_new_tokens  # both runs generate the same token count
        answerer.answer_all(items[:2], 2)  # warm-up
        results = {}
        for batch in (1, args.batch_size):
            start = time.perf_counter()
            answers = answerer.answer_all(items, batch)
            results[batch] = (answers, len(items) / (time.perf_counter() - start))
    same = results[1][0] == results[args.batch_size][0]
    print(f"batch 1: {results[1][1]:.2f} answers/s; batch {args.batch_size}: "
          f"{results[args.batch_size][1]:.2f} answers/s; speed-up x{results[args.batch_size][1] / results[1][1]:.2f}; "
          f"identical answers: {same}")


if __name__ == "__main__":
    main()
