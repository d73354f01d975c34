"""Anyres preprocessing speed: ours vs transformers' LlavaNextImageProcessorPil, one core.

Times decode + tiles + normalisation per image on the same synthetic
photo-like JPEGs (gradients, shapes, noise) and prints a markdown table.
Run: python bench/anyres_preprocess.py [--repeats 7]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy/torch load their thread pools

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil  # noqa: E402

from llava.anyres import default_grid_pinpoints  # noqa: E402
from llava.mm_utils import process_anyres_image  # noqa: E402


def photo_jpeg(width, height, seed) -> bytes:
    """A JPEG with photo-like statistics: smooth gradients, random shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 1 - (x + y) / (width + height)], -1) * 180 + 30
    image = Image.fromarray(np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(10, width // 3)), y0 + int(rng.integers(10, height // 3))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per image and implementation (median kept)")
    parser.add_argument("--images", type=int, default=3, help="distinct JPEGs per size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = 336
    pinpoints = default_grid_pinpoints(s)
    ours_proc = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    ref_proc = LlavaNextImageProcessorPil(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints
    )

    def decode(data):
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    def ours(data):
        return process_anyres_image(decode(data), ours_proc, pinpoints)

    def reference(data):
        return ref_proc(decode(data), return_tensors="pt")["pixel_values"][0]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, 1 thread used")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| image | JPEG decode (ms) | ours (ms) | transformers (ms) | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for width, height in [(640, 480), (2250, 1500)]:
        files = [photo_jpeg(width, height, seed) for seed in range(args.images)]
        dec = statistics.median(median_ms(lambda d=d: decode(d), args.repeats) for d in files)
        ours_ms = statistics.median(median_ms(lambda d=d: ours(d), args.repeats) for d in files)
        ref_ms = statistics.median(median_ms(lambda d=d: reference(d), args.repeats) for d in files)
        diff = max(float((ours(d) - reference(d)).abs().max()) for d in files)
        print(f"| {width}x{height} | {dec:.1f} | {ours_ms:.1f} | {ref_ms:.1f} | {ref_ms / ours_ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
