"""Two torchrun ranks (gloo, CPU) build the same dataset: one scans, the other loads its cache file.

The waiting rank polls the lock file in a sleep loop, outside any collective,
so a scan of any length cannot hit the process group's timeout: here the
group's timeout is 10 s and the scanner is made to take longer than that.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train_support import REPO

SCRIPT = r'''
import datetime, json, logging, os, sys, time

import torch.distributed as dist

logging.basicConfig(level=logging.INFO, format="[rank%(rank)s] %(message)s")
rank = os.environ["RANK"]
for h in logging.getLogger().handlers:
    h.addFilter(lambda r: setattr(r, "rank", rank) or True)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=10))

from transformers import CLIPImageProcessorPil

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.data import parallel_scan
from llava.data.dataset import LazySupervisedDataset
from llava.demo.tiny import load_vendored_tokenizer

spec = json.loads(sys.argv[1])
slow_scan = parallel_scan.run_scan
def run_scan(*args, **kw):  # the scanner outlasts the group's timeout: waiting must not be a collective
    time.sleep(spec["delay"])
    return slow_scan(*args, **kw)
parallel_scan.run_scan = run_scan

ds = LazySupervisedDataset(spec["data"], load_vendored_tokenizer("llama2"), version="v1", max_length=256,
                           layout=ImageLayout(56, 14, to_pinpoint_tuple(default_grid_pinpoints(56))),
                           image_processor=CLIPImageProcessorPil(size={"shortest_edge": 56},
                                                                 crop_size={"height": 56, "width": 56}),
                           image_folder=spec["folder"], cache_dir=spec["cache"])
kept = [(ds.records.sample_id(int(i)), int(n)) for i, n in zip(ds.entries.index, ds.entries.length)]
everyone = [None, None]
dist.all_gather_object(everyone, kept)
print("RESULT " + json.dumps({"rank": int(rank), "same": everyone[0] == everyone[1], "kept": len(kept),
                              "skipped": ds.problems.total}), flush=True)
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_samples(n: int, folder: Path) -> list:
    """n samples over 4 images; every 50th has a missing image, every 10th is text-only."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate([(90, 40), (56, 56), (40, 100), (120, 70)]):
        Image.new("RGB", size, (40 * i, 120, 90)).save(folder / f"{i}.png")
    samples = []
    for k in range(n):
        conv = [{"from": "human", "value": f"Describe item {k}."}, {"from": "gpt", "value": f"Item {k} is red."}]
        sample = {"id": f"s{k}", "conversations": conv}
        if k % 10:
            sample["image"] = "missing.png" if k % 50 == 1 else f"{k % 4}.png"
            conv[0]["value"] = "<image>\n" + conv[0]["value"]
        samples.append(sample)
    return samples


def run_two_ranks(tmp_path, n: int, delay: float, timeout: int):
    folder = tmp_path / "images"
    data = tmp_path / "data.json"
    data.write_text(json.dumps(make_samples(n, folder)))
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    spec = json.dumps(dict(data=str(data), folder=str(folder), cache=str(tmp_path / "cache"), delay=delay))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), spec]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return out, sorted(results, key=lambda r: r["rank"])


def _check(out, results, n):
    scanned = [line for line in out.splitlines() if "data: scanned" in line]
    loaded = [line for line in out.splitlines() if "loaded the scan cache" in line]
    assert len(scanned) == 1 and len(loaded) == 1, out[-4000:]
    scanner = scanned[0].split("]")[0].split("rank")[-1]
    other = "1" if scanner == "0" else "0"
    assert loaded[0].startswith(f"[rank{other}] data: rank {other} loaded the scan cache")
    assert f"written by rank {scanner} " in loaded[0]
    expected_skipped = len([k for k in range(n) if k % 10 and k % 50 == 1])
    assert [r["same"] for r in results] == [True, True]
    assert [r["kept"] for r in results] == [n - expected_skipped] * 2
    assert [r["skipped"] for r in results] == [expected_skipped] * 2


def test_two_ranks_scan_once_past_the_group_timeout(tmp_path):
    out, results = run_two_ranks(tmp_path, n=400, delay=12.0, timeout=240)
    _check(out, results, 400)
    assert "waiting for the scan held by" in out


@pytest.mark.slow
def test_two_ranks_200k_samples_scan_once(tmp_path):
    out, results = run_two_ranks(tmp_path, n=200_000, delay=0.0, timeout=3600)
    _check(out, results, 200_000)
