"""DeepSpeed resume loads no pickled code: a crafted global_step* file is refused, real states still resume exactly.

ZeRO-2 and ZeRO-3 on CPU (gloo), two processes, as the launch scripts run them. Slow: minutes.
"""

import os
import shutil
import signal
import socket
import subprocess

import pytest
import torch

from train_support import REPO, make_data, pretrain_argv

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed(argv, timeout: int = 600) -> tuple[int, str]:
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), str(REPO / "llava/train/train_mem.py"),
           *map(str, argv)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"deepspeed run timed out after {timeout} s:\n{out[-5000:]}")
    return proc.returncode, out


class _RunsCode:
    """Pickles as a call to os.system: unpickling with weights_only=False would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ds_ckpt_data"))


@pytest.fixture(scope="module", params=["zero2", "zero3"])
def run(request, tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, max_steps=4, save_steps=2, bf16=True,
                         per_device_train_batch_size=1, deepspeed=REPO / "scripts" / f"{request.param}.json")
    code, log = _deepspeed(argv)
    assert code == 0, log[-5000:]
    return request.param, argv, out


def _copy_checkpoint_2(argv, out, dst):
    shutil.copytree(out / "checkpoint-2", dst / "checkpoint-2")
    argv = list(argv)
    argv[argv.index("--output_dir") + 1] = str(dst)
    return argv


def test_resume_with_weights_only_loads_is_exact(run, tmp_path):
    stage, argv, out = run
    copy = tmp_path / "copy"
    code, log = _deepspeed(_copy_checkpoint_2(argv, out, copy))
    assert code == 0, log[-5000:]
    assert "resuming from checkpoint-2: step 2" in log
    a = torch.load(out / "mm_projector.bin", weights_only=True)
    b = torch.load(copy / "mm_projector.bin", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), rtol=0, atol=1e-5, msg=f"{stage} {key}")


def test_crafted_pickle_in_engine_state_does_not_run(run, tmp_path):
    stage, argv, out = run
    copy = tmp_path / "copy"
    argv = _copy_checkpoint_2(argv, out, copy)
    tag = (copy / "checkpoint-2" / "latest").read_text().strip()
    states = sorted((copy / "checkpoint-2" / tag).glob("*model_states.pt"))
    marker = tmp_path / "code-ran"
    for path in states:  # a tensor-looking file whose unpickling would run a command
        torch.save({"module": _RunsCode(marker)}, path)
    code, log = _deepspeed(argv)
    assert code != 0
    assert "refusing" in log and "model_states.pt" in log, log[-5000:]
    assert not marker.exists(), f"{stage}: the crafted pickle ran"
