"""The end-to-end CLI as users run it: `python llava/train/train.py` with LLaVA's flags, both stages, then inference."""

import os
import subprocess
import sys

import torch
from PIL import Image

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from train_support import REPO, finetune_argv, make_data, pretrain_argv


def _run(script, argv, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_cli_pretrain_then_finetune_then_generate(tiny_llama_dir, tiny_clip_dir, tmp_path):
    data = make_data(tmp_path / "data")
    pre = tmp_path / "llava-tiny-pretrain"
    log = _run("llava/train/train.py", pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, pre, max_steps=2,
                                                     gradient_checkpointing=True, tf32=True,
                                                     report_to="tensorboard"), cwd=tmp_path)
    assert "tokens_per_second" in log and "padding_share" in log
    assert "data: kept 8, skipped 0 samples (at the end of training; replaced while loading: 0)" in log  # default level
    assert list((pre / "runs").rglob("events.out.tfevents.*"))  # --report_to tensorboard, offline
    assert sorted(torch.load(pre / "mm_projector.bin", weights_only=True)) == [
        "model.image_newline", "model.mm_projector.0.bias", "model.mm_projector.0.weight",
        "model.mm_projector.2.bias", "model.mm_projector.2.weight"]

    ft = tmp_path / "llava-tiny-finetune"
    _run("llava/train/train_mem.py", finetune_argv(tiny_llama_dir, tiny_clip_dir, data, ft, pre / "mm_projector.bin",
                                                   max_steps=2, group_by_modality_length=True, learning_rate=1e-4),
         cwd=tmp_path)
    tokenizer, model, processor, context_len = load_pretrained_model(ft, None, ft.name, device="cpu",
                                                                     torch_dtype="float32")
    # context_len as LLaVA-NeXT reports it: the LLM's max_position_embeddings (4096 in the tiny config)
    assert context_len == 4096 and model.config.image_aspect_ratio == "anyres"
    assert tokenizer.pad_token == "<unk>" and model.config.tokenizer_padding_side == "right"
    # The finetune started from the pretrain projector and changed it.
    pretrained = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert not torch.equal(model.get_model().mm_projector[0].weight, pretrained["model.mm_projector.0.weight"])

    image = Image.open(data / "images" / "2.png")
    pixels = process_images([image], processor, model.config)
    ids = tokenizer_image_token("USER: <image>\nDescribe item 2. ASSISTANT:", tokenizer, return_tensors="pt")
    new = model.generate(ids.unsqueeze(0), images=list(pixels), image_sizes=[image.size], max_new_tokens=4,
                         do_sample=False)
    assert new.shape == (1, 4) and tokenizer.decode(new[0]) != ""
