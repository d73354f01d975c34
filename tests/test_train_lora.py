"""LoRA (train, merge, load, generate) and the gradient-accumulation invariant, in-process on tiny models."""

import importlib.util

import pytest
import torch
from PIL import Image

from llava.model.builder import load_pretrained_model
from llava.train.arguments import parse_args
from llava.train.train import build, train
from train_support import REPO, changed, finetune_argv, make_data, pretrain_argv, snapshot


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("lora_data"))


@pytest.fixture(scope="module")
def projector(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    """A pretrain-stage mm_projector.bin (2 steps) to finetune from."""
    out = tmp_path_factory.mktemp("lora_pre") / "pre"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, max_steps=2, save_strategy="no"))
    return out / "mm_projector.bin"


def _merge_script():
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_train_merge_load_generate(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path):
    out = tmp_path / "llava-tiny-lora"
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, projector, lora_enable=True, lora_r=8,
                         lora_alpha=16, lora_dropout=0.0, max_steps=2, warmup_ratio=0.0, save_strategy="no")
    _, fresh, _ = build(*parse_args(argv))
    before = snapshot(fresh)
    del fresh
    trainer = train(argv=argv)
    names = changed(before, trainer.model)
    lora = {n for n in names if "lora_" in n}
    assert lora and all(".vision_tower." not in n and "mm_projector" not in n for n in lora)
    assert all(".layers." in n for n in lora)  # only the LLM's decoder linears carry adapters
    assert {n.removeprefix("base_model.model.") for n in names - lora} == {
        "model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
        "model.mm_projector.2.bias", "model.image_newline"}  # the base LLM and the tower are bit-identical
    non_lora = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert {k.removeprefix("base_model.model.") for k in non_lora} == {
        n.removeprefix("base_model.model.") for n in names - lora}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= {p.name for p in out.iterdir()}

    merged = tmp_path / "llava-tiny-merged"
    _merge_script().main(["--model-path", str(out), "--model-base", str(tiny_llama_dir), "--save-model-path", str(merged)])
    tokenizer, model, processor, _ = load_pretrained_model(merged, None, merged.name, device="cpu", torch_dtype="float32")
    # Merged = base + B @ A * alpha / r on the LLM; projector as trained.
    trained = dict(trainer.model.named_parameters())
    q = "model.layers.0.self_attn.q_proj"
    a, b = trained[f"base_model.model.{q}.lora_A.default.weight"], trained[f"base_model.model.{q}.lora_B.default.weight"]
    expected = before[f"base_model.model.{q}.base_layer.weight"] + (b @ a) * (16 / 8)
    params = dict(model.named_parameters())
    torch.testing.assert_close(params[f"{q}.weight"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params["model.mm_projector.0.weight"],
                               trained["base_model.model.model.mm_projector.0.weight"].detach())

    from llava.mm_utils import process_images, tokenizer_image_token

    image = Image.open(data / "images" / "0.png")
    pixels = process_images([image], processor, model.config)
    ids = tokenizer_image_token("USER: <image>\nWhat is it? ASSISTANT:", tokenizer, return_tensors="pt").unsqueeze(0)
    new = model.generate(ids, images=list(pixels), image_sizes=[image.size], max_new_tokens=3, do_sample=False)
    assert new.shape == (1, 3)


def test_gradient_accumulation_matches_large_batch(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path):
    """8 steps of batch 1 x accumulation 8 == 8 steps of batch 8: same per-step loss (num_items_in_batch)."""
    common = dict(num_train_epochs=8, warmup_ratio=0.0, learning_rate=1e-3, save_strategy="no", logging_steps=1)
    small = train(argv=finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "a", projector,
                                     per_device_train_batch_size=1, gradient_accumulation_steps=8, **common))
    big = train(argv=finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "b", projector,
                                   per_device_train_batch_size=8, gradient_accumulation_steps=1, **common))
    curve_small = [float(e["loss"]) for e in small.state.log_history if "loss" in e]
    curve_big = [float(e["loss"]) for e in big.state.log_history if "loss" in e]
    assert len(curve_small) == len(curve_big) == 8
    assert curve_big[-1] < curve_big[0]  # it trains
    torch.testing.assert_close(torch.tensor(curve_small), torch.tensor(curve_big), rtol=1e-4, atol=1e-4)
