"""`load_pretrained_model` on the three checkpoint kinds training writes, CPU fp32.

Each loaded model must give the logits of the model that was saved: a full
checkpoint, a projector-only pretrain checkpoint over `model_base`, and a LoRA
checkpoint (adapter + `non_lora_trainables.bin`) merged over `model_base`.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

PROMPT = "A chat. USER: <image>\nWhat is this? ASSISTANT:"
CPU = dict(device="cpu", torch_dtype="float32")


def make_llava(llm_dir, tower_dir):
    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    args = SimpleNamespace(
        vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres", image_grid_pinpoints=None,
    )
    torch.manual_seed(0)
    model.get_model().initialize_vision_modules(args)
    return model.eval()


def logits(model, tokenizer, image_processor):
    """Logits for one prompt with a 90x40 image, through LLaVA's entry points."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    ids = tokenizer_image_token(PROMPT, tokenizer, return_tensors="pt").unsqueeze(0)
    pixels = process_images([picture], image_processor, model.config)
    with torch.no_grad():
        return model(input_ids=ids, images=pixels, image_sizes=[picture.size]).logits


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tiny_clip_dir):
    return make_llava(tiny_llama_dir, tiny_clip_dir)


def test_full_checkpoint_round_trip(tmp_path, reference, tiny_llama_dir, tiny_clip_dir, tokenizers):
    model = make_llava(tiny_llama_dir, tiny_clip_dir)
    with torch.no_grad():  # a "finetuned" tower: the checkpoint, not the tower folder, must provide it
        next(model.get_vision_tower().parameters()).add_(0.5)
    model.config.tokenizer_model_max_length = 777
    tower_processor = model.get_vision_tower().image_processor
    model.save_pretrained(tmp_path)
    tokenizers("llama2").save_pretrained(tmp_path)
    tower_processor.save_pretrained(tmp_path)

    tokenizer, loaded, processor, context_len = load_pretrained_model(tmp_path, None, "llava-tiny", **CPU)
    assert type(loaded).__name__ == "LlavaLlamaForCausalLM"
    assert context_len == 4096  # LLaVA-NeXT reports max_position_embeddings before tokenizer_model_max_length
    assert tokenizer.pad_token == tokenizer.unk_token  # llama2 has no pad token; LLaVA pads with unk
    assert processor.to_dict() == tower_processor.to_dict()
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    expected = logits(model, tokenizer, tower_processor)
    torch.testing.assert_close(logits(loaded, tokenizer, processor), expected, atol=0, rtol=0)
    assert not torch.allclose(expected, logits(reference, tokenizer, tower_processor))  # the tower change mattered


def test_projector_only_checkpoint_over_base(tmp_path, reference, tiny_llama_dir, tokenizers):
    model = reference
    model.config.save_pretrained(tmp_path)
    weights = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    weights["model.image_newline"] = model.get_model().image_newline.detach()
    torch.save(weights, tmp_path / "mm_projector.bin")

    tokenizer, loaded, processor, context_len = load_pretrained_model(
        tmp_path, tiny_llama_dir, "llava-tiny-pretrain", device="cpu", torch_dtype=torch.float32
    )
    assert context_len == 4096  # the tiny LLM's max_position_embeddings, as LLaVA-NeXT reports it
    expected = logits(model, tokenizer, processor)
    torch.testing.assert_close(logits(loaded, tokenizer, processor), expected, atol=0, rtol=0)


def test_lora_checkpoint_merges_over_base(tmp_path, tiny_llama_dir, tiny_clip_dir, tokenizers):
    from peft import LoraConfig, get_peft_model

    model = make_llava(tiny_llama_dir, tiny_clip_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # trained adapters are non-zero
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        projector = model.get_model().mm_projector
        projector[0].weight.add_(torch.randn(projector[0].weight.shape, generator=generator) * 0.1)
    # LLaVA's non_lora_trainables.bin: the trainable non-LoRA tensors, named inside the PeftModel.
    non_lora = {
        n: p.detach().clone() for n, p in peft_model.named_parameters() if "mm_projector" in n or "newline" in n
    }
    assert len(non_lora) == 5 and all(n.startswith("base_model.model.model.") for n in non_lora)
    peft_model.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    torch.save(non_lora, tmp_path / "non_lora_trainables.bin")

    tokenizer, loaded, processor, _ = load_pretrained_model(tmp_path, tiny_llama_dir, "llava-tiny-lora", **CPU)
    assert type(loaded).__name__ == "LlavaLlamaForCausalLM"  # merged and unwrapped
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    expected = logits(peft_model.eval(), tokenizer, processor)
    base_only = logits(make_llava(tiny_llama_dir, tiny_clip_dir), tokenizer, processor)
    assert not torch.allclose(expected, base_only, atol=1e-3)  # the adapter and projector do change the output
    torch.testing.assert_close(logits(loaded, tokenizer, processor), expected, atol=1e-5, rtol=1e-5)

    del non_lora["base_model.model.model.image_newline"]  # a file that lacks a weight the base has not
    torch.save(non_lora, tmp_path / "non_lora_trainables.bin")
    with pytest.raises(KeyError, match=r"lacks \['model.image_newline'\]"):
        load_pretrained_model(tmp_path, tiny_llama_dir, "llava-tiny-lora", **CPU)


def test_quantised_or_cuda_loading_without_gpu_fails_clearly(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="load_8bit/load_4bit need bitsandbytes on a CUDA device; got device='cpu'"):
        load_pretrained_model(tiny_llama_dir, None, "llava", load_4bit=True, **CPU)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_pretrained_model(tiny_llama_dir, None, "llava", device="cuda:0")  # explicit; the defaults fall back to the CPU
    with pytest.raises(ValueError, match="unknown torch_dtype 'float17'"):
        load_pretrained_model(tiny_llama_dir, None, "llava", device="cpu", torch_dtype="float17")


def _tamper(folder, how):
    """Edit a saved model.safetensors: drop, add or reshape one tensor; returns the tensor's name."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    key = {"missing": "model.mm_projector.2.weight", "extra": "model.mm_projector.9.weight",
           "shape": "model.mm_projector.0.bias", "llm": "model.layers.1.mlp.up_proj.weight"}[how]
    if how in ("missing", "llm"):
        del weights[key]
    elif how == "extra":
        weights[key] = torch.zeros(4, 4)
    else:
        weights[key] = weights[key][:-1].clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("how", ["missing", "extra", "shape", "llm"])
def test_full_checkpoint_with_a_wrong_tensor_is_refused(how, tmp_path, reference, tokenizers):
    reference.save_pretrained(tmp_path)
    tokenizers("llama2").save_pretrained(tmp_path)
    key = _tamper(tmp_path, how)
    with pytest.raises(ValueError, match=r"weight files do not match") as err:
        load_pretrained_model(tmp_path, None, "llava-tiny", **CPU)
    assert key in str(err.value)
    kind = {"missing": "missing", "llm": "missing", "extra": "extra", "shape": "wrong shape"}[how]
    assert f"{kind} [" in str(err.value)


@pytest.mark.parametrize("how", ["no-newline", "shape", "extra"])
def test_projector_file_with_a_wrong_tensor_is_refused(how, tmp_path, reference, tiny_llama_dir):
    reference.config.save_pretrained(tmp_path)
    weights = {f"model.mm_projector.{k}": v for k, v in reference.get_model().mm_projector.state_dict().items()}
    weights["model.image_newline"] = reference.get_model().image_newline.detach()
    if how == "no-newline":
        del weights["model.image_newline"]
    elif how == "shape":
        weights["model.mm_projector.2.bias"] = weights["model.mm_projector.2.bias"][:1]  # would broadcast
    else:
        weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(1)
    torch.save(weights, tmp_path / "mm_projector.bin")
    expected = {"no-newline": r"lacks \['model.image_newline'\]", "shape": r"model.mm_projector.2.bias \(1,\)",
                "extra": r"does not have: \['model.layers.0.mlp.up_proj.weight'\]"}[how]
    with pytest.raises((KeyError, ValueError), match=expected):
        load_pretrained_model(tmp_path, tiny_llama_dir, "llava-tiny-pretrain", **CPU)


def test_pretrain_adapter_is_loaded_strictly(tmp_path, reference, tiny_llama_dir, tiny_clip_dir):
    """--pretrain_mm_mlp_adapter: no missing image_newline (spatial_unpad needs it), no broadcast, nothing extra."""
    good = {f"model.mm_projector.{k}": v.clone() for k, v in reference.get_model().mm_projector.state_dict().items()}
    good["model.image_newline"] = torch.randn_like(reference.get_model().image_newline)
    torch.save(good, tmp_path / "good.bin")
    inner = make_llava(tiny_llama_dir, tiny_clip_dir).get_model()
    inner.load_mm_adapter(tmp_path / "good.bin")
    assert torch.equal(inner.image_newline.detach(), good["model.image_newline"])
    cases = {
        "no_newline": ({k: v for k, v in good.items() if k != "model.image_newline"}, r"lacks \['model.image_newline'\]"),
        "shape": ({**good, "model.mm_projector.0.bias": good["model.mm_projector.0.bias"][:1]},
                  r"model.mm_projector.0.bias \(1,\) vs model \(64,\)"),
        "extra": ({**good, "model.norm.weight": torch.ones(64)}, r"does not have: \['model.norm.weight'\]"),
    }
    for name, (weights, message) in cases.items():
        torch.save(weights, tmp_path / f"{name}.bin")
        with pytest.raises((KeyError, ValueError), match=message):
            inner.load_mm_adapter(tmp_path / f"{name}.bin")
