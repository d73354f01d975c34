"""LoRA checkpoints: an exact resume, and a refused one when the adapter or non-LoRA file does not match."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.train.checkpoints import checkpoint_problems
from llava.train.train import train
from train_support import finetune_argv, make_data, pretrain_argv


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, tiny_clip_dir, tmp_path_factory):
    data = make_data(tmp_path_factory.mktemp("lora_resume_data"))
    pre = tmp_path_factory.mktemp("lora_resume_pre") / "pre"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, pre, max_steps=1, save_strategy="no"))
    out = tmp_path_factory.mktemp("lora_resume") / "lora"
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, pre / "mm_projector.bin", lora_enable=True,
                         lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=2, save_steps=1, warmup_ratio=0.0)
    train(argv=argv)
    return argv, out


def _copy(argv, out, dst, edit=None):
    shutil.copytree(out / "checkpoint-1", dst / "checkpoint-1")
    if edit is not None:
        edit(dst / "checkpoint-1")
    argv = list(argv)
    argv[argv.index("--output_dir") + 1] = str(dst)
    return argv


def test_lora_checkpoint_is_complete_and_resumes_exactly(lora_run, tmp_path, caplog):
    argv, out = lora_run
    assert checkpoint_problems(out / "checkpoint-1") == []
    with caplog.at_level(logging.WARNING):
        train(argv=_copy(argv, out, tmp_path / "copy"))
    assert "resuming from checkpoint-1: step 1" in caplog.text  # resumed, not retrained from the start
    a, b = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "copy" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    a = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    b = torch.load(tmp_path / "copy" / "non_lora_trainables.bin", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


def test_adapter_missing_a_tensor_is_refused(lora_run, tmp_path):
    argv, out = lora_run
    dropped = []

    def edit(folder):
        weights = load_file(folder / "adapter_model.safetensors")
        dropped.append(sorted(weights)[0])
        del weights[dropped[0]]
        save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})

    argv = _copy(argv, out, tmp_path / "copy", edit)
    with pytest.raises(ValueError, match="does not match the model's adapters") as err:
        train(argv=argv)
    assert dropped[0] in str(err.value)


def test_non_lora_file_missing_the_newline_is_refused(lora_run, tmp_path):
    argv, out = lora_run

    def edit(folder):
        weights = torch.load(folder / "non_lora_trainables.bin", weights_only=True)
        del weights["base_model.model.model.image_newline"]
        torch.save(weights, folder / "non_lora_trainables.bin")

    with pytest.raises(KeyError, match=r"lacks \['model.image_newline'\]"):
        train(argv=_copy(argv, out, tmp_path / "copy", edit))
