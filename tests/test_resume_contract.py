"""Resuming with settings the data order depends on changed: refused, naming the old and new values.

Each case resumes a copy of a pretrain run's checkpoint-2 (batch 2,
accumulation 1, one process, 8 samples) with one thing changed. None may train.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from llava.train.checkpoints import RESUME_FILE, ResumeContract, dataset_fingerprint
from llava.train.train import train
from train_support import REPO, make_data, pretrain_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("contract_data"))


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "run"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2, max_steps=2))
    return out / "checkpoint-2"


def _resume(run, tmp_path, llm, clip, data, **flags):
    out = tmp_path / "resumed"
    shutil.copytree(run, out / run.name)
    return out, pretrain_argv(llm, clip, data, out, save_steps=2, **flags)


@pytest.mark.parametrize("flags,message", [
    ({"per_device_train_batch_size": 4}, "per_device_train_batch_size: checkpoint 2, now 4"),
    ({"per_device_train_batch_size": 1}, "per_device_train_batch_size: checkpoint 2, now 1"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps: checkpoint 1, now 2"),
    ({"seed": 1}, "seed: checkpoint 0, now 1"),
    ({"group_by_modality_length": True}, "group_by_modality_length: checkpoint False, now True"),
], ids=["batch-up", "batch-down", "accumulation", "seed", "sampler"])
def test_changed_setting_is_refused(flags, message, run, tmp_path, tiny_llama_dir, tiny_clip_dir, data):
    out, argv = _resume(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data, **flags)
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-2 exactly") as err:
        train(argv=argv)
    assert message in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]  # nothing trained, nothing written


def test_shrunk_dataset_is_refused(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data):
    smaller = tmp_path / "pretrain.json"
    records = json.loads((data / "pretrain.json").read_text())
    smaller.write_text(json.dumps(records[:6]))  # e.g. an image folder briefly missing: two samples dropped
    out, argv = _resume(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data, data_path=smaller)
    with pytest.raises(ValueError) as err:
        train(argv=argv)
    assert "dataset_size: checkpoint 8, now 6" in str(err.value)


def test_same_size_other_samples_is_refused(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data):
    records = json.loads((data / "pretrain.json").read_text())
    records[0]["conversations"][1]["value"] += " Much longer now, so its length differs."
    changed = tmp_path / "pretrain.json"
    changed.write_text(json.dumps(records))
    _, argv = _resume(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data, data_path=changed)
    with pytest.raises(ValueError, match="dataset_fingerprint: checkpoint '[0-9a-f]+', now '[0-9a-f]+'"):
        train(argv=argv)


def test_other_process_count_is_refused(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data):
    """The checkpoint says 2 processes wrote it (its record edited), this run has 1."""
    out, argv = _resume(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data)
    record = json.loads((out / run.name / RESUME_FILE).read_text())
    record["contract"]["world_size"] = 2
    (out / run.name / RESUME_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="world_size: checkpoint 2, now 1"):
        train(argv=argv)


def test_contract_differences_and_fingerprint():
    class Data:
        def __init__(self, lengths):
            self.modality_lengths = lengths

        def __len__(self):
            return len(self.modality_lengths)

    assert dataset_fingerprint(Data([3, -4, 5])) == dataset_fingerprint(Data([3, -4, 5]))
    assert dataset_fingerprint(Data([3, -4, 5])) != dataset_fingerprint(Data([3, 4, 5]))  # modality matters
    assert dataset_fingerprint(list(range(4))) != dataset_fingerprint(list(range(5)))  # any __len__ dataset
    a = ResumeContract(1, 2, 1, 0, None, False, 8, "x")
    b = ResumeContract(2, 2, 1, 0, 7, False, 6, "x")
    assert a.differences(a) == []
    assert a.differences(b) == ["world_size: checkpoint 1, now 2", "data_seed: checkpoint None, now 7",
                                "dataset_size: checkpoint 8, now 6"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_resuming_a_one_process_checkpoint_fail(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data):
    out, argv = _resume(run, tmp_path, tiny_llama_dir, tiny_clip_dir, data, per_device_train_batch_size=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(REPO / "llava/train/train.py"), *map(str, argv)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode != 0
    assert "world_size: checkpoint 1, now 2" in log and "per_device_train_batch_size: checkpoint 2, now 1" in log
