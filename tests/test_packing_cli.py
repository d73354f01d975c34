"""`--packing True` from the command line (issue 10, acceptance 3): both stages, same losses, exact resume.

With the same seed and samples, the packed run logs the padded run's
per-step losses (token-level mean over the step through num_items_in_batch)
and a padding_share of 0.
"""

import ast
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from llava.train.train import train
from train_support import finetune_argv, make_data, pretrain_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("packing_data"))


def _logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def _printed_logs(out: str) -> list[dict]:
    """The per-step log dicts the Trainer printed (they carry the throughput keys log_history lacks)."""
    return [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{'loss'")]


def _assert_same_losses(padded, packed, printed: str):
    a, b = _logs(padded), _logs(packed)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(x["loss"])), (x, y)  # logged rounded
    shares = [float(log["padding_share"]) for log in _printed_logs(printed)]  # printed as strings
    assert len(shares) == 8 and shares[4:] == [0.0] * 4  # padded run first, then the packed run
    assert max(shares[:4]) > 0.05  # the padded run did pad


def test_pretrain_packed_losses_equal_padded(tiny_llama_dir, tiny_clip_dir, data, tmp_path, capsys):
    padded = train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "padded", save_strategy="no"))
    packed = train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "packed", save_strategy="no",
                                      packing=True))
    _assert_same_losses(padded, packed, capsys.readouterr().out)


def test_finetune_packed_losses_equal_padded_and_resume_exact(tiny_llama_dir, tiny_clip_dir, data, tmp_path, capsys):
    projector = tmp_path / "mm_projector.bin"  # a fresh projector: this test does not depend on the pretrain one
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "pre", save_strategy="no", max_steps=1))
    shutil.copy(tmp_path / "pre" / "mm_projector.bin", projector)
    capsys.readouterr()
    flags = dict(learning_rate=1e-4, group_by_modality_length=True)
    padded = train(argv=finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "padded", projector,
                                      save_strategy="no", **flags))
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "packed", projector, save_steps=2,
                         packing=True, **flags)
    packed = train(argv=argv)
    _assert_same_losses(padded, packed, capsys.readouterr().out)

    copy = tmp_path / "resumed"
    shutil.copytree(tmp_path / "packed" / "checkpoint-2", copy / "checkpoint-2")
    resumed = train(argv=[str(copy) if a == str(tmp_path / "packed") else a for a in argv])
    assert resumed.state.global_step == 4
    assert [x["loss"] for x in _logs(resumed)] == [x["loss"] for x in _logs(packed)]  # steps 1-2 come from the checkpoint
    a, b = load_file(tmp_path / "packed" / "model.safetensors"), load_file(copy / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


def test_use_liger_kernel_without_liger_warns_once_and_trains(tiny_llama_dir, tiny_clip_dir, data, tmp_path, caplog):
    from llava.model.fused_loss import liger_unavailable_reason

    if liger_unavailable_reason() is None:
        pytest.skip("liger-kernel and a GPU are present")
    with caplog.at_level(logging.WARNING):
        trainer = train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "out", save_strategy="no",
                                           max_steps=1, use_liger_kernel=True, packing=True))
    assert trainer.state.global_step == 1
    liger = [r for r in caplog.records if "liger" in r.getMessage().lower() and r.levelno >= logging.WARNING]
    assert len(liger) == 1 and liger_unavailable_reason() in liger[0].getMessage()


def test_lora_packed_losses_equal_padded(tiny_llama_dir, tiny_clip_dir, data, tmp_path):
    projector = tmp_path / "mm_projector.bin"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "pre", save_strategy="no", max_steps=1))
    shutil.copy(tmp_path / "pre" / "mm_projector.bin", projector)
    flags = dict(lora_enable=True, lora_r=4, lora_alpha=8, learning_rate=1e-3, max_steps=2, save_strategy="no")
    runs = [train(argv=finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / name, projector, packing=packing,
                                     **flags)) for name, packing in (("padded", False), ("packed", True))]
    a, b = (_logs(t) for t in runs)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(x["loss"])), (x, y)
