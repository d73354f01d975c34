"""A run killed while writing a checkpoint resumes, with the same command, from the previous complete one.

Pretrain stage on tiny models: 8 samples, batch 2, 4 steps, a checkpoint every
2 steps. The kill comes during the save of checkpoint-4, at several points
inside the write (before a file, after a torn file, before the final rename);
the rerun must resume from checkpoint-2 and end with the weights of an
uninterrupted run.
"""

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from llava.train import checkpoints
from llava.train.train import train
from train_support import REPO, make_data, pretrain_argv

CALLS_PER_SAVE = 4  # torch.save per pretrain checkpoint: mm_projector.bin, optimizer.pt, scheduler.pt, rng_state.pth


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so no `except Exception` on the way can swallow it."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("crash_data"))


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    """The uninterrupted run's final mm_projector.bin."""
    out = tmp_path_factory.mktemp("crash_ref") / "run"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2))
    return torch.load(out / "mm_projector.bin", weights_only=True)


def _assert_same(out, reference):
    final = torch.load(out / "mm_projector.bin", weights_only=True)
    assert final.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=0, atol=1e-5, msg=key)


def _kill_at_save_call(monkeypatch, call: int, torn: bool):
    """torch.save number `call` (1-based, whole run) dies: before writing, or after writing half the file."""
    real_save, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] == call:
            if torn:
                real_save(obj, f, *args, **kwargs)
                size = os.path.getsize(f)
                with open(f, "r+b") as fh:
                    fh.truncate(size // 2)
            raise Killed(f"killed at torch.save #{call} ({f})")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("call,torn", [(1, False), (3, True), (4, False)], ids=["projector", "torn-scheduler", "rng"])
def test_kill_inside_the_write_resumes_from_previous_checkpoint(
        call, torn, tiny_llama_dir, tiny_clip_dir, data, reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2)
    with monkeypatch.context() as patch:
        _kill_at_save_call(patch, CALLS_PER_SAVE + call, torn)  # inside checkpoint-4's write
        with pytest.raises(Killed):
            train(argv=argv)
    assert [p.name for p in checkpoints.checkpoint_folders(out)] == ["checkpoint-2"]
    assert (out / ".partial-checkpoint-4").is_dir()
    with caplog.at_level(logging.WARNING):
        trainer = train(argv=argv)  # the same command
    assert trainer.state.global_step == 4
    assert "ignoring unfinished checkpoint save(s) ['.partial-checkpoint-4']" in caplog.text
    assert "resuming from checkpoint-2: step 2" in caplog.text
    _assert_same(out, reference)
    assert not (out / ".partial-checkpoint-4").exists() and not checkpoints.checkpoint_problems(out / "checkpoint-4")


def test_kill_before_the_rename_resumes_from_previous_checkpoint(
        tiny_llama_dir, tiny_clip_dir, data, reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2)
    real_publish = checkpoints.publish

    def publish(staging, final):
        if final.name == "checkpoint-4":
            raise Killed("killed before the rename")
        real_publish(staging, final)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "publish", publish)
        with pytest.raises(Killed):
            train(argv=argv)
    assert not checkpoints.checkpoint_problems(out / ".partial-checkpoint-4")  # fully written, never published
    with caplog.at_level(logging.WARNING):
        train(argv=argv)
    assert "resuming from checkpoint-2" in caplog.text
    _assert_same(out, reference)


def test_damaged_newest_checkpoints_are_skipped_and_reported(tiny_llama_dir, tiny_clip_dir, data, tmp_path, caplog):
    """checkpoint-N folders damaged after their save (a file lost, a file cut short) are skipped, not resumed from."""
    out = tmp_path / "run"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2, max_steps=6)
    train(argv=argv)
    uninterrupted = torch.load(out / "mm_projector.bin", weights_only=True)
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    torn = out / "checkpoint-6" / "mm_projector.bin"
    with open(torn, "r+b") as f:
        f.truncate(torn.stat().st_size // 2)
    with pytest.raises(ValueError, match=r"checkpoint-4: optimizer.pt is missing"):
        train(argv=[*argv, "--resume_from_checkpoint", str(out / "checkpoint-4")])
    with caplog.at_level(logging.WARNING):
        trainer = train(argv=argv)
    assert "skipping incomplete checkpoint-6: mm_projector.bin is unreadable" in caplog.text
    assert "skipping incomplete checkpoint-4: optimizer.pt is missing" in caplog.text
    assert "resuming from checkpoint-2: step 2" in caplog.text
    assert trainer.state.global_step == 6
    _assert_same(out, uninterrupted)
    assert all(not checkpoints.checkpoint_problems(p) for p in checkpoints.checkpoint_folders(out))  # rewritten


def test_rotation_keeps_the_newest_complete_checkpoint(tiny_llama_dir, tiny_clip_dir, data, tmp_path):
    out = tmp_path / "run"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=1, save_total_limit=2))
    assert [p.name for p in checkpoints.checkpoint_folders(out)] == ["checkpoint-3", "checkpoint-4"]
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-5")
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    for name in ("checkpoint-5", "checkpoint-6"):
        (out / name / "scheduler.pt").unlink()  # damaged: not resumable
    deleted = checkpoints.rotate(out, 1)
    # transformers keeps the newest folder (checkpoint-6); here the newest complete one survives
    assert [p.name for p in checkpoints.checkpoint_folders(out)] == ["checkpoint-4"]
    assert [p.name for p in deleted] == ["checkpoint-3", "checkpoint-5", "checkpoint-6"]


@pytest.mark.slow  # two CLI processes: about a minute
def test_os_exit_mid_write_then_cli_rerun_prints_resume_line(tiny_llama_dir, tiny_clip_dir, data, reference, tmp_path):
    """A real process death (os._exit) with a torn file, then the plain CLI: the report and the resume line
    reach stderr at the default log level."""
    out = tmp_path / "run"
    argv = [str(a) for a in pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2)]
    dying = (
        "import os, sys, torch\n"
        "real, n = torch.save, [0]\n"
        "def save(obj, f, *a, **k):\n"
        "    n[0] += 1\n"
        "    real(obj, f, *a, **k)\n"
        f"    if n[0] == {CALLS_PER_SAVE + 2}:\n"
        "        open(f, 'r+b').truncate(os.path.getsize(f) // 2); os._exit(137)\n"
        "torch.save = save\n"
        "from llava.train.train import train\n"
        "train(argv=sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, "-c", dying, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-3000:]
    rerun = subprocess.run([sys.executable, "-m", "llava.train.train", *argv], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "ignoring unfinished checkpoint save(s) ['.partial-checkpoint-4']" in rerun.stderr
    assert "resuming from checkpoint-2: step 2" in rerun.stderr
    _assert_same(out, reference)
