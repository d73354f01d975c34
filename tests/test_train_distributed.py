"""DeepSpeed ZeRO-2/3 and torchrun launches on CPU (gloo), as the launch scripts run them. Slow: minutes.

The first DeepSpeed start on a machine JIT-builds its CPU communication op
(about a minute, then cached).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from llava.model.builder import load_pretrained_model
from train_support import REPO, finetune_argv, make_data, pretrain_argv

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, script: str, argv, nproc: int = 2, timeout: int = 600) -> str:
    if launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(_free_port())]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port())]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([*cmd, str(REPO / script), *map(str, argv)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's workers too: a hang must not outlive the test
        out, _ = proc.communicate()
        pytest.fail(f"{launcher} run timed out after {timeout} s:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("dist_data"))


@pytest.fixture(scope="module")
def zero2_pretrain(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("z2") / "llava-z2-pretrain"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, max_steps=4, save_steps=2, bf16=True,
                         per_device_train_batch_size=1, deepspeed=REPO / "scripts" / "zero2.json")
    log = _launch("deepspeed", "llava/train/train_mem.py", argv)
    return argv, out, log


def test_zero2_pretrain_bf16(zero2_pretrain):
    _, out, log = zero2_pretrain
    assert "samples_per_second" in log
    state = torch.load(out / "mm_projector.bin", weights_only=True)
    assert len(state) == 5 and all(v.dtype == torch.bfloat16 for v in state.values())
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_zero2_pretrain_resume_is_exact(zero2_pretrain, tmp_path):
    argv, out, _ = zero2_pretrain
    copy = tmp_path / out.name
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    argv = list(argv)
    argv[argv.index("--output_dir") + 1] = str(copy)
    _launch("deepspeed", "llava/train/train_mem.py", argv)
    a = torch.load(out / "mm_projector.bin", weights_only=True)
    b = torch.load(copy / "mm_projector.bin", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), rtol=0, atol=1e-5)


def test_zero3_finetune_mixed_modalities_saves_loadable_checkpoint(tiny_llama_dir, tiny_clip_dir, data,
                                                                   zero2_pretrain, tmp_path):
    """Mixed image / text-only data (6 + 2 samples) on 2 ranks: grouped so each step is one modality everywhere."""
    out = tmp_path / "llava-z3-finetune"
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, zero2_pretrain[1] / "mm_projector.bin",
                         bf16=True, per_device_train_batch_size=1, group_by_modality_length=True,
                         gradient_checkpointing=True, learning_rate=1e-4, deepspeed=REPO / "scripts" / "zero3.json")
    _launch("deepspeed", "llava/train/train_mem.py", argv)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    tokenizer, model, processor, _ = load_pretrained_model(out, None, out.name, device="cpu", torch_dtype="float32")
    pretrained = torch.load(zero2_pretrain[1] / "mm_projector.bin", weights_only=True)
    weight = model.get_model().mm_projector[0].weight
    assert weight.shape == pretrained["model.mm_projector.0.weight"].shape  # gathered, not a ZeRO-3 shard
    assert not torch.equal(weight.to(torch.bfloat16), pretrained["model.mm_projector.0.weight"])  # it trained
    newline = model.get_model().image_newline  # used in the splice, outside its module's own forward
    assert newline.shape == pretrained["model.image_newline"].shape
    assert not torch.equal(newline.to(torch.bfloat16), pretrained["model.image_newline"])  # trained under ZeRO-3 too
    ids = tokenizer("USER: Hello ASSISTANT:", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape == (1, 2)


def test_torchrun_two_processes_shard_the_data(tiny_llama_dir, tiny_clip_dir, data, zero2_pretrain, tmp_path):
    out = tmp_path / "llava-ddp"
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, zero2_pretrain[1] / "mm_projector.bin",
                         per_device_train_batch_size=2, gradient_checkpointing=True, learning_rate=1e-4)
    _launch("torchrun", "llava/train/train.py", argv)
    state = json.loads((out / "trainer_state.json").read_text())
    # 8 samples, 2 per process and step, 2 processes: one epoch is 2 steps (4 if every rank saw all the data).
    assert (state["global_step"], state["epoch"]) == (2, 1.0)
