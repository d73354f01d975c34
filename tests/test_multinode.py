"""Two "nodes" on one machine: `NNODES=2 NODE_RANK=0|1 bash scripts/next/tiny/finetune.sh` (torchrun, gloo).

Each node is one CPU process; they rendezvous at MASTER_ADDR:MASTER_PORT,
train together, write one checkpoint, and a second launch of both resumes
from it. A node started alone waits for its peer and trains nothing.
Slow: a minute or two on two cores.
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = "scripts/next/tiny/finetune.sh"
TRAIN_SAMPLES = 16  # finetune.json holds one sample per training image

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(work, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                                                            "HOSTFILE", "NPROC_PER_NODE")}
    env.update(WORK=str(work), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false",
               BF16="False", PER_DEVICE_BATCH="2", **extra)
    return env


def _start(work, rank, port, **extra):
    env = _env(work, NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **extra)
    return subprocess.Popen(["bash", FINETUNE], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc, timeout=900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's worker too
        out, _ = proc.communicate()
        pytest.fail(f"a node timed out:\n{out[-5000:]}")
    return out


def _two_nodes(work, **extra) -> list[str]:
    port = _free_port()
    nodes = [_start(work, rank, port, **extra) for rank in (0, 1)]
    outs = [_finish(proc) for proc in nodes]
    for rank, (proc, out) in enumerate(zip(nodes, outs)):
        assert proc.returncode == 0, f"node {rank}:\n{out[-5000:]}"
    return outs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The quick start's preparation and a one-step pretrain (the finetune's projector), single process."""
    work = tmp_path_factory.mktemp("multinode") / "work"
    subprocess.run(["python", "-m", "llava.demo.prepare", "--work", str(work), "--train", str(TRAIN_SAMPLES),
                    "--test", "4"], cwd=ROOT, env=_env(work), check=True, capture_output=True)
    proc = subprocess.run(["bash", "scripts/next/tiny/pretrain.sh"], cwd=ROOT, env=_env(work, MAX_STEPS="1"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "pretrain" / "mm_projector.bin").is_file()
    return work


def test_two_nodes_train_together_checkpoint_and_resume(work):
    out_dir = work / "finetune"
    _two_nodes(work, MAX_STEPS="2", SAVE_STRATEGY="steps", SAVE_STEPS="2")
    assert sorted(p.name for p in out_dir.glob("checkpoint-*")) == ["checkpoint-2"]  # one checkpoint, by rank 0 only
    state = json.loads((out_dir / "trainer_state.json").read_text())
    # 2 steps x 2 samples x 2 processes = 8 of the 16 samples: half an epoch (a quarter if one node trained alone)
    assert (state["global_step"], state["epoch"]) == (2, 0.5)

    outs = _two_nodes(work, MAX_STEPS="4", SAVE_STRATEGY="steps", SAVE_STEPS="4")
    # the trainer's resume line, printed by each node: the checkpoint, and the world it was written by (2 processes)
    assert all("resuming from checkpoint-2: step 2, epoch 0.5; 2 process(es) x batch 2" in out for out in outs), \
        outs[0][-3000:]
    state = json.loads((out_dir / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"]) == (4, 1.0)
    assert sorted(p.name for p in out_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == sorted(steps)


def test_node_zero_alone_waits_for_its_peer(work, tmp_path):
    """NNODES=2 with only node 0 started: torchrun's rendezvous blocks; no step runs, no checkpoint is written."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("base", "data", "pretrain"):
        (alone / name).symlink_to(work / name)
    proc = _start(alone, 0, _free_port(), MAX_STEPS="2", SAVE_STRATEGY="steps", SAVE_STEPS="1")
    try:
        time.sleep(45)  # long enough for a lone node to load and train two tiny steps, were it not waiting
        assert proc.poll() is None, "node 0 exited instead of waiting for node 1"
        assert not list(alone.glob("finetune/checkpoint-*"))
        assert not (alone / "finetune" / "trainer_state.json").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert "'loss'" not in out and "train_runtime" not in out, out[-3000:]
