"""Checkpoints in the reference code's on-disk format load, convert and train further.

LLaVA-1.5 / LLaVA-NeXT write: no `mm_vision_config` (the tower is known by its
folder, `mm_vision_tower`), `model_type` `llava` / `llava_llama` /
`llava_qwen`, bf16 weights, and LLaVA-1.5 releases keep no tower weights.
The fixture rewrites one of our checkpoints into that format (we cannot run
the reference code here: it needs transformers 4.x) and every load must give
exactly the model it describes: bf16-rounded weights, the tower from its
folder when the checkpoint has none.

Their tokenizers ship `tokenizer.model` (SentencePiece); ours are vendored as
`tokenizer.json` only, and no SentencePiece model can be rebuilt from it, so
most fixtures keep `tokenizer.json` (see docs/Conversion.md), and one trains a
small real SentencePiece model to check a `tokenizer.model`-only folder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from eval_support import build_checkpoint
from llava.model.builder import load_pretrained_model
from llava.model.vision_tower import build_vision_tower

CPU = dict(device="cpu", torch_dtype="float32")
TOWER = "model.vision_tower."


def to_reference(src, dst, model_type: str, keep_tower: bool):
    """Our folder rewritten as the reference code saves it."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.pop("mm_vision_config")
    config.pop("dtype", None)
    arch = "LlavaQwenForCausalLM" if "qwen" in model_type else "LlavaLlamaForCausalLM"
    config.update(model_type=model_type, torch_dtype="bfloat16", architectures=[arch])
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(dst / "model.safetensors")
    projector = {k: v.to(torch.bfloat16) for k, v in weights.items() if "mm_projector" in k or "image_newline" in k}
    torch.save(projector, dst / "mm_projector.bin")
    weights = {k: v.to(torch.bfloat16) for k, v in weights.items() if keep_tower or not k.startswith(TOWER)}
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def expected_state(ours_dir, tower_dir, keep_tower: bool) -> dict:
    """Our weights as the reference folder holds them: bf16-rounded; the tower's from its folder if not kept."""
    state = {k: v.to(torch.bfloat16).float() for k, v in load_file(ours_dir / "model.safetensors").items()}
    if not keep_tower:
        tower = load_file(tower_dir / "model.safetensors")
        state = {k: (tower[k.removeprefix(TOWER + "vision_tower.vision_model.")] if k.startswith(TOWER) else v)
                 for k, v in state.items()}
    return state


@pytest.fixture(scope="module")
def ours(tmp_path_factory, tiny_llama_dir, tiny_clip_dir, tokenizers):
    return build_checkpoint(tmp_path_factory.mktemp("ours") / "llava-ours", tiny_llama_dir, tiny_clip_dir,
                            tokenizers("llama2"))


@pytest.fixture(scope="module")
def ours_qwen(tmp_path_factory, tiny_qwen_dir, tiny_clip_dir, tokenizers):
    return build_checkpoint(tmp_path_factory.mktemp("ours") / "llava-qwen", tiny_qwen_dir, tiny_clip_dir,
                            tokenizers("qwen2"), family="qwen2")


def test_llava_qwen_loads_exactly(tmp_path, ours_qwen, tiny_clip_dir):
    ref = to_reference(ours_qwen, tmp_path / "ref", "llava_qwen", keep_tower=False)
    _, model, _, _ = load_pretrained_model(ref, None, "some-name", **CPU)
    assert type(model).__name__ == "LlavaQwenForCausalLM"
    expected, state = expected_state(ours_qwen, tiny_clip_dir, keep_tower=False), saved_state(model)
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)


def test_bin_weights_load_exactly(tmp_path, ours, tiny_clip_dir):
    """LLaVA-1.5's releases ship `pytorch_model.bin`: read without unpickling, checked tensor by tensor, exact."""
    ref = to_reference(ours, tmp_path / "ref", "llava_llama", keep_tower=False)
    torch.save(load_file(ref / "model.safetensors"), ref / "pytorch_model.bin")
    (ref / "model.safetensors").unlink()
    _, model, _, _ = load_pretrained_model(ref, None, "llava-v1.5-ref", **CPU)
    expected, state = expected_state(ours, tiny_clip_dir, keep_tower=False), saved_state(model)
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    weights = torch.load(ref / "pytorch_model.bin", weights_only=True)
    weights.pop("model.mm_projector.0.bias")
    torch.save(weights, ref / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing \['model.mm_projector.0.bias'\]"):
        load_pretrained_model(ref, None, "llava-v1.5-ref", **CPU)


def saved_state(model) -> dict:
    """The model's state with the keys as saved (transformers 5 drops `vision_model.` in memory)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(TOWER + "vision_tower.") and not k.startswith(TOWER + "vision_tower.vision_model."):
            k = k.replace(TOWER + "vision_tower.", TOWER + "vision_tower.vision_model.", 1)
        out[k] = v
    return out


@pytest.mark.parametrize("model_type, keep_tower", [("llava", False), ("llava_llama", True)])
def test_loads_exactly(tmp_path, ours, tiny_clip_dir, model_type, keep_tower):
    ref = to_reference(ours, tmp_path / "llava-v1.5-ref", model_type, keep_tower)
    tokenizer, model, processor, context_len = load_pretrained_model(ref, None, "llava-v1.5-ref", **CPU)
    assert type(model).__name__ == "LlavaLlamaForCausalLM" and model.config.model_type == "llava_llama"
    assert model.config.mm_vision_config["hidden_size"] == 32  # read from the mm_vision_tower folder
    expected = expected_state(ours, tiny_clip_dir, keep_tower)
    state = saved_state(model)
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected), [k for k in expected
                                                                        if not torch.equal(state[k], expected[k])]
    assert context_len == 4096


def test_tower_from_folder_config_builds_on_meta_device(ours):
    """What transformers 5 does while constructing the model: no weight loading may happen there."""
    from llava.model import LlavaConfig

    config = json.loads((ours / "config.json").read_text())
    config.pop("mm_vision_config")
    config.pop("model_type")
    with torch.device("meta"):
        tower = build_vision_tower(LlavaConfig.from_dict(config))
    assert tower.hidden_size == 32 and next(tower.parameters()).device.type == "meta"


def test_missing_tower_folder_is_named(tmp_path, ours):
    ref = to_reference(ours, tmp_path / "ref", "llava", keep_tower=False)
    config = json.loads((ref / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (ref / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="mm_vision_tower folder 'openai/clip-vit-large-patch14-336'"):
        load_pretrained_model(ref, None, "ref", **CPU)


def test_converts_with_the_check_passing(tmp_path, ours):
    from llava.export.check import compare_with_hf
    from llava.export.convert import convert

    ref = to_reference(ours, tmp_path / "ref", "llava", keep_tower=False)
    model, tokenizer, image_processor, conv_mode = convert(ref, tmp_path / "hf", conv_mode="v1")
    result = compare_with_hf(model, tokenizer, image_processor, tmp_path / "hf", conv_mode)
    assert result.passed(1e-4), result.line()


def test_continues_training(tmp_path, ours, tiny_clip_dir):
    """`--model_name_or_path` a reference checkpoint, `--pretrain_mm_mlp_adapter` its mm_projector.bin."""
    from llava.train.arguments import parse_args
    from llava.train.train import build, train
    from train_support import changed, finetune_argv, make_data, snapshot

    ref = to_reference(ours, tmp_path / "ref", "llava", keep_tower=False)
    (ref / "tokenizer.model").write_bytes(sentencepiece_model(tmp_path))
    data = make_data(tmp_path / "data")
    argv = finetune_argv(ref, tiny_clip_dir, data, tmp_path / "out", ref / "mm_projector.bin", max_steps=4,
                         save_strategy="no", warmup_ratio=0)  # 8 samples: every step has a nonzero lr
    _, model, _ = build(*parse_args(argv))
    expected = expected_state(ours, tiny_clip_dir, keep_tower=False)
    state = saved_state(model)
    assert all(torch.equal(state[k], expected[k]) for k in expected)  # starts exactly from the checkpoint
    before = snapshot(model)
    del model
    trainer = train(argv=argv)
    trained = changed(before, trainer.model)
    assert {"lm_head.weight", "model.mm_projector.2.weight", "model.layers.0.mlp.up_proj.weight"} <= trained, trained
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (ref / "tokenizer.model").read_bytes()


def sentencepiece_model(tmp_path) -> bytes:
    """A small real SentencePiece model (the reference folders' tokenizer.model)."""
    import sentencepiece as spm

    text = tmp_path / "spm.txt"
    text.write_text("\n".join(["what colour is the shape", "a red square and a blue circle"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=30,
                                   model_type="bpe", minloglevel=2)
    return (tmp_path / "spm.model").read_bytes()


def sentencepiece_tokenizer(vocab_size: int = 400) -> bytes:
    """A SentencePiece BPE model with Llama's special ids, big enough to tokenise prompts (a tokenizer.model)."""
    import io
    import random

    import sentencepiece as spm

    words = "USER ASSISTANT what colour is the shape a red green blue yellow circle square image answer".split()
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    return out.getvalue()


def test_tokenizer_model_only_checkpoint_loads(tmp_path, ours):
    """A reference folder whose tokenizer is `tokenizer.model` alone (no tokenizer.json) loads, with that vocabulary."""
    import sentencepiece as spm

    ref = to_reference(ours, tmp_path / "ref", "llava_llama", keep_tower=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "chat_template.jinja"):
        (ref / name).unlink(missing_ok=True)
    proto = sentencepiece_tokenizer()
    (ref / "tokenizer.model").write_bytes(proto)
    (ref / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "model_max_length": 512, "padding_side": "right",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    config = json.loads((ref / "config.json").read_text())
    config["vocab_size"] = vocab
    (ref / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(ref / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[key] = weights[key][:vocab].clone()
    save_file(weights, ref / "model.safetensors", metadata={"format": "pt"})

    tokenizer, model, _, _ = load_pretrained_model(ref, None, "llava-v1.5-ref", **CPU)
    assert not (ref / "tokenizer.json").exists() and len(tokenizer) == vocab == 400
    text = "USER: what colour is the shape? ASSISTANT: red"
    assert tokenizer(text).input_ids == [1] + spm.SentencePieceProcessor(model_proto=proto).encode(text)
    state = saved_state(model)
    assert torch.equal(state["model.embed_tokens.weight"], weights["model.embed_tokens.weight"].float())
    assert torch.equal(state["lm_head.weight"], weights["lm_head.weight"].float())
