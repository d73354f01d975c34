"""Data pipeline speed and memory: the preflight check, per-sample __getitem__, and start-up at scale.

    python bench/data_pipeline.py --samples 10000 --getitem 300
    python bench/data_pipeline.py --scale 200000 --baseline /tmp/llava-before --train_start

Default mode: builds a synthetic LLaVA-style dataset in a temporary folder:
real JPEG files of COCO-like sizes (one per image sample), 10% text-only
samples, 1-3 rounds of conversation, the real llama2 tokenizer and a
CLIP-L/336 geometry (336-px tiles, LLaVA-NeXT's five grids). Reports
samples/s of `llava.data.check` (extrapolated to LLaVA-665K) and of
`LazySupervisedDataset.__getitem__` (tokenise + decode + anyres tiles) on one core.

`--scale N` (issue 11): a mix665K-like JSON of N samples (about 1.75 KB each,
as the real file; 90% with one image, pointing at 32 real JPEGs of varied
sizes, so headers are real reads but each file is read once per scan chunk).
Each start runs in a fresh process and reports the dataset construction time,
the RSS it adds (anonymous and file-backed) per sample, and the private
memory (USS) a forked dataloader worker gains by touching every record.
Starts: the code under `--baseline` (a copy of the package before the scan
cache, e.g. `git archive d6d1c84 | tar -x -C /tmp/llava-before`), then this
code cold (empty cache) and warm. `--train_start` also times whole
`llava/train/train.py` runs (tiny model, one step) cold, warm and on 1K samples.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir()
    sizes = [(640, 480), (480, 640), (640, 427), (500, 375), (800, 600), (1024, 768), (336, 336)]
    base = {s: Image.effect_noise((s[0] // 4, s[1] // 4), 40).convert("RGB").resize(s) for s in sizes}
    samples = []
    words = "the a cat dog sits on mat red blue image shows two people near table with food".split()
    for i in range(n):
        rounds = [(" ".join(rng.choices(words, k=rng.randint(5, 20))) + "?",
                   " ".join(rng.choices(words, k=rng.randint(10, 120))) + ".") for _ in range(rng.randint(1, 3))]
        conv = []
        for q, a in rounds:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        sample = {"id": str(i), "conversations": conv}
        if i % 10:
            name = f"{i:06d}.jpg"
            base[rng.choice(sizes)].save(images / name, quality=85)
            sample["image"] = name
            conv[0]["value"] = "<image>\n" + conv[0]["value"]
        samples.append(sample)
    path = root / "data.json"
    path.write_text(json.dumps(samples))
    tower = root / "clip336"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "image_size": 336,
                                                   "patch_size": 14, "hidden_size": 1024}))
    return root


WORDS = ("the a cat dog sits on mat red blue image shows two people near table with food what is in this picture "
         "describe scene color left right small large bus street sign man woman holding").split()


def build_mix(root: Path, n: int, seed: int = 0) -> Path:
    """A mix665K-like JSON of n samples (streamed to disk: never n dicts in memory) and 32 JPEGs."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(32):
        w, h = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375), (800, 600), (1024, 768), (336, 336)])
        Image.effect_noise((w // 8, h // 8), 40).convert("RGB").resize((w, h)).save(root / f"images/{k:02d}.jpg")
    path = root / f"mix{n}.json"
    with open(path, "w") as fh:
        fh.write("[")
        for i in range(n):
            conv = []
            for _ in range(rng.randint(2, 5) if i % 10 else rng.randint(4, 8)):
                conv += [{"from": "human", "value": " ".join(rng.choices(WORDS, k=rng.randint(6, 20))) + "?"},
                         {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(35, 90))) + "."}]
            sample = {"id": f"{i:09d}", "conversations": conv}
            if i % 10:
                sample["image"] = f"{rng.randrange(32):02d}.jpg"
                conv[0]["value"] = "<image>\n" + conv[0]["value"]
            fh.write(("," if i else "") + json.dumps(sample))
        fh.write("]")
    return path


def _memory() -> dict:
    """KiB: RssAnon and RssFile of this process (/proc/self/status), USS (/proc/self/smaps_rollup)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rollup = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    kib = lambda d, k: int(d[k].split()[0])  # noqa: E731
    return dict(anon=kib(status, "RssAnon"), file=kib(status, "RssFile"),
                uss=kib(rollup, "Private_Clean") + kib(rollup, "Private_Dirty"))


def _worker_growth(records) -> float:
    """MiB of private memory a forked child gains by reading every record (what a dataloader worker does)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        before = _memory()["uss"]
        total = 0
        for i in range(len(records)):
            total += sum(len(turn["value"]) for turn in records[i].sample["conversations"])
        os.write(write_fd, json.dumps([before, _memory()["uss"], total]).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        before, after, _ = json.loads(fh.read())
    os.waitpid(pid, 0)
    return (after - before) / 1024


def measure_start(data: str, images: str, cache: str) -> dict:
    """Build the dataset as train.py does (llama2, v1, CLIP-336 anyres); time, memory per sample, worker growth."""
    from transformers import CLIPImageProcessorPil

    from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
    from llava.data.dataset import LazySupervisedDataset
    from llava.demo.tiny import load_vendored_tokenizer

    tok = load_vendored_tokenizer("llama2")
    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    layout = ImageLayout(336, 14, to_pinpoint_tuple(default_grid_pinpoints(336)), "anyres", "spatial_unpad")
    kwargs = dict(version="v1", max_length=4096, layout=layout, image_processor=processor, image_folder=images)
    if "cache_dir" in inspect.signature(LazySupervisedDataset).parameters:  # not in the baseline
        kwargs["cache_dir"] = cache
    gc.collect()
    before, t0 = _memory(), time.perf_counter()
    ds = LazySupervisedDataset(data, tok, **kwargs)
    seconds = time.perf_counter() - t0
    gc.collect()
    after, n = _memory(), len(ds.records)
    return dict(seconds=round(seconds, 1), samples=n, kept=len(ds),
                anon_kib_per_sample=round((after["anon"] - before["anon"]) / n, 2),
                file_kib_per_sample=round((after["file"] - before["file"]) / n, 2),
                rss_mib=round((after["anon"] + after["file"]) / 1024), worker_mib=round(_worker_growth(ds.records), 1))


def _run(cmd, env) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def _start(code: str, data: Path, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=code, TOKENIZERS_PARALLELISM="true")
    _, out = _run([sys.executable, __file__, "--_measure", str(data), str(data.parent / "images"), cache], env)
    return json.loads(out.strip().splitlines()[-1])


def _train_start(code: str, root: Path, data: Path, cache: str) -> float:
    """Wall seconds of a whole train.py run: imports, tiny model, dataset, one step, save."""
    argv = ["--model_name_or_path", root / "llm", "--vision_tower", root / "clip", "--version", "v1",
            "--data_path", data, "--image_folder", root / "images", "--output_dir", root / f"out-{time.time_ns()}",
            "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad", "--max_steps", "1",
            "--per_device_train_batch_size", "1", "--model_max_length", "4096", "--use_cpu", "True",
            "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0", "--disable_tqdm", "True"]
    env = dict(os.environ, PYTHONPATH=code, LLAVA_DATA_CACHE_DIR=cache, TOKENIZERS_PARALLELISM="true")
    seconds, _ = _run([sys.executable, str(Path(code) / "llava/train/train.py"), *map(str, argv)], env)
    return round(seconds, 1)


def scale(n: int, baseline: str | None, train_start: bool, keep: str | None, train_only: bool = False):
    """The issue-11 comparison; prints one JSON line per start and a Markdown table."""
    from llava.demo.tiny import build_tiny_llm, build_tiny_vision_tower

    here = str(Path(__file__).resolve().parents[1])
    root = Path(keep or tempfile.mkdtemp(prefix="llava-scale-"))
    t0 = time.perf_counter()
    data = root / f"mix{n}.json"
    if not data.exists():
        data = build_mix(root, n)
    print(f"data: {n} samples, {data.stat().st_size / n:.0f} bytes/sample, built in {time.perf_counter() - t0:.0f} s; "
          f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    if baseline and not train_only:
        rows.append(("before (no cache, Python dicts)", _start(baseline, data, "none")))
        print(rows[-1], flush=True)
    cache = str(root / f"cache-{time.time_ns()}")
    for label in () if train_only else ("scan cache: cold", "scan cache: warm"):
        rows.append((label, _start(here, data, cache)))
        print(rows[-1], flush=True)
    print("| start | seconds | RSS (MiB) | anon KiB/sample | file-backed KiB/sample | forked worker reading all (MiB) |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['seconds']} | {r['rss_mib']} | {r['anon_kib_per_sample']} | "
              f"{r['file_kib_per_sample']} | {r['worker_mib']} |")
    if train_start or train_only:
        build_tiny_llm(root / "llm", family="llama", tokenizer="llama2")
        build_tiny_vision_tower(root / "clip", family="clip", image_size=56)
        small = root / "mix1000.json"
        if not small.exists():
            build_mix(root, 1000)
        starts = {}
        if baseline and not train_only:
            starts["before"] = _train_start(baseline, root, data, cache)
        tcache = str(root / f"train-cache-{time.time_ns()}")
        starts["cold"] = _train_start(here, root, data, tcache)
        starts["warm"] = _train_start(here, root, data, tcache)
        starts["1K cold"] = _train_start(here, root, small, tcache)
        starts["1K warm"] = _train_start(here, root, small, tcache)
        print("train.py start (s): " + json.dumps(starts), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=10000, help="synthetic samples (90%% with an image)")
    p.add_argument("--getitem", type=int, default=300, help="samples loaded through __getitem__")
    p.add_argument("--headers_only", action="store_true", help="check without decoding pixels (the check's --headers_only)")
    p.add_argument("--scale", type=int, default=None, help="start-up comparison at this many mix-like samples")
    p.add_argument("--baseline", default=None, help="folder with the package before the scan cache (for --scale)")
    p.add_argument("--train_start", action="store_true", help="with --scale: also time whole train.py starts")
    p.add_argument("--keep", default=None, help="with --scale: build/reuse the data in this folder")
    p.add_argument("--train_only", action="store_true", help="with --scale: only the train.py starts of this code")
    p.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._measure:
        print(json.dumps(measure_start(*args._measure)))
        return
    if args.scale:
        scale(args.scale, args.baseline, args.train_start, args.keep, args.train_only)
        return

    import torch
    from transformers import CLIPImageProcessorPil

    from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
    from llava.data import check
    from llava.data.dataset import LazySupervisedDataset
    from llava.demo.tiny import load_vendored_tokenizer, vendored_tokenizer_dir

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = build(Path(tmp), args.samples)
        print(f"built {args.samples} samples in {time.perf_counter() - t0:.1f} s")
        argv = ["--data_path", str(root / "data.json"), "--image_folder", str(root / "images"),
                "--model_name_or_path", str(vendored_tokenizer_dir("llama2")), "--version", "v1",
                "--model_max_length", "4096", "--vision_tower", str(root / "clip336"), "--no_progress",
                "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad"]
        argv += ["--headers_only"] if args.headers_only else []
        t0 = time.perf_counter()
        check.main(argv)
        dt = time.perf_counter() - t0
        print(f"check: {args.samples / dt:.0f} samples/s ({dt:.1f} s incl. tokenizer load); "
              f"665K samples -> {665_000 / (args.samples / dt) / 60:.1f} min")

        tok = load_vendored_tokenizer("llama2")
        processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        layout = ImageLayout(336, 14, to_pinpoint_tuple(default_grid_pinpoints(336)), "anyres", "spatial_unpad")
        ds = LazySupervisedDataset(str(root / "data.json"), tok, version="v1", max_length=4096, layout=layout,
                                   image_processor=processor, image_folder=str(root / "images"))
        n = min(args.getitem, len(ds))
        ds[0]
        t0 = time.perf_counter()
        tiles = sum(sum(x.shape[0] for x in ds[i]["images"]) for i in range(n))
        dt = time.perf_counter() - t0
        print(f"__getitem__: {n / dt:.1f} samples/s on one core ({1000 * dt / n:.1f} ms/sample, "
              f"{tiles / n:.1f} tiles of 336 px per sample); cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
