"""The HF converter: a finetuned-like tiny checkpoint converts, loads offline in transformers, and agrees.

Checkpoints are built the way train.py builds a finetuned model (LLM folder +
`initialize_vision_modules` + a non-zero `image_newline`), saved with
tokenizer and image processor, then converted by `llava.export.convert`.
transformers' inputs come from the converted processor, ours from LLaVA's
entry points (`tokenizer_image_token`, `process_images`, PIL `image.size`).
"""

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.constants import IMAGE_TOKEN_INDEX
from llava.export.check import compare_with_hf, conversations, generated_image

ROOT = Path(__file__).resolve().parent.parent
TILE = 56
# (LLM family, tokenizer, conversation version, tower)
CASES = {
    "llama-v1-clip": ("llama", "llama2", "v1", "clip"),
    "qwen2-siglip": ("qwen2", "qwen2", "qwen_2", "siglip"),
    "llama3-clip": ("llama", "llama3", "llava_llama_3", "clip"),
}
# PIL (width, height): tiny, wide, tall, square, just above a tile multiple
SIZES = [(1, 1), (150, 30), (30, 150), (113, 57)]


def make_checkpoint(dst: Path, llm_dir, tower_dir, family: str) -> Path:
    """A full checkpoint as finetuning leaves it: weights, config, tokenizer, image processor."""
    from transformers import AutoTokenizer

    from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    cls = LlavaQwenForCausalLM if family == "qwen2" else LlavaLlamaForCausalLM
    model = cls.from_pretrained(llm_dir, dtype=torch.float32)
    args = SimpleNamespace(
        vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres", image_grid_pinpoints=None, mm_use_im_start_end=False, mm_use_im_patch_token=False,
    )
    torch.manual_seed(3)
    model.get_model().initialize_vision_modules(args)
    with torch.no_grad():  # as after training: no part is at its initial value
        model.get_model().image_newline.normal_()
        for p in model.get_model().mm_projector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(llm_dir).save_pretrained(dst)
    model.get_vision_tower().image_processor.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def converted(request, tmp_path_factory, tiny_llama_dir, tiny_llama3_dir, tiny_qwen_dir, tiny_clip_dir, tiny_siglip_dir):
    """(case, our model, tokenizer, image processor, converted folder, conv mode, check result)."""
    from llava.export.convert import convert

    family, tok, version, tower = CASES[request.param]
    llm = {"llama2": tiny_llama_dir, "llama3": tiny_llama3_dir, "qwen2": tiny_qwen_dir}[tok]
    root = tmp_path_factory.mktemp(request.param)
    src = make_checkpoint(root / "ckpt", llm, tiny_clip_dir if tower == "clip" else tiny_siglip_dir, family)
    dst = root / "hf"
    model, tokenizer, image_processor, conv_mode = convert(src, dst)
    result = compare_with_hf(model, tokenizer, image_processor, dst, conv_mode)
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(dst, dtype=torch.float32, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(dst, local_files_only=True)
    return SimpleNamespace(case=request.param, version=version, tower=tower, model=model, tokenizer=tokenizer,
                           image_processor=image_processor, src=src, dst=dst, conv_mode=conv_mode, result=result,
                           hf=hf, processor=processor)


def test_builtin_check_passes(converted):
    r = converted.result
    assert converted.conv_mode == converted.version  # guessed from the tokenizer's special tokens
    assert r.chat_template_equal and r.prompt_ids_equal and r.tokens_equal, r.line()
    assert r.max_abs_logit_diff <= 1e-3, r.line()
    assert r.passed(1e-3)


def test_folder_layout_and_processor(converted):
    from transformers import AutoProcessor, LlavaNextConfig

    dst, model = converted.dst, converted.model
    names = {p.name for p in dst.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)  # safetensors only
    config = LlavaNextConfig.from_pretrained(dst)
    processor = AutoProcessor.from_pretrained(dst, local_files_only=True)
    vocab = model.config.vocab_size
    assert config.text_config.vocab_size == vocab + 1  # room for the added <image>
    assert config.image_token_index == processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") == vocab
    added = processor.tokenizer.added_tokens_decoder[vocab]
    assert added.content == "<image>" and added.special and not added.normalized
    assert processor.patch_size == 14
    clip = converted.tower == "clip"
    assert processor.vision_feature_select_strategy == config.vision_feature_select_strategy == ("default" if clip else "full")
    assert processor.num_additional_image_tokens == (1 if clip else 0)
    assert config.vision_feature_layer == -2
    pinpoints = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints == pinpoints
    assert type(processor.image_processor).__name__.startswith("LlavaNextImageProcessor")


def test_chat_template_renders_our_conversation(converted):
    processor = converted.processor
    for prompt, messages in conversations(converted.conv_mode):
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = processor.apply_chat_template(system, add_generation_prompt=True, tokenize=False)
    assert "Be brief." in rendered and "Hi" in rendered


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_logits_and_greedy_tokens_on_image_sizes(converted, size):
    """Offline reload; ours through mm_utils, theirs through the converted processor; fp32 logits within 1e-3."""
    from llava.mm_utils import process_images, tokenizer_image_token

    hf, processor = converted.hf, converted.processor  # loaded offline from the converted folder
    model, image = converted.model, generated_image(*size, seed=sum(size))
    prompt = conversations(converted.conv_mode)[0][0]
    ids = tokenizer_image_token(prompt, converted.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    tiles = process_images([image], converted.image_processor, model.config)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    n_image = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert n_image == model.get_image_layout().num_tokens((image.height, image.width))
    with torch.no_grad():
        ours = model(input_ids=ids, images=tiles, image_sizes=[image.size]).logits
        theirs = hf(**inputs).logits[..., : ours.shape[-1]]
        torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=0)
        common = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=hf.generation_config.pad_token_id)
        ours_new = model.generate(ids, images=tiles, image_sizes=[image.size], **common)
        theirs_new = hf.generate(**inputs, **common)[:, inputs["input_ids"].shape[1]:]
    assert ours_new.tolist() == theirs_new.tolist()


@pytest.mark.parametrize("converted", ["qwen2-siglip"], indirect=True)
def test_check_detects_a_tampered_weight(converted, tmp_path):
    """The built-in check can fail: nudge image_newline in the converted file and it must say so."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(converted.dst, bad)
    weights = load_file(bad / "model.safetensors")
    (key,) = [k for k in weights if k.endswith("image_newline")]
    weights[key] = weights[key] + 0.5
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    result = compare_with_hf(converted.model, converted.tokenizer, converted.image_processor, bad, converted.conv_mode)
    assert result.max_abs_logit_diff > 1e-3
    assert not result.passed(1e-3)


@pytest.mark.parametrize("converted", ["llama-v1-clip"], indirect=True)
def test_shell_script_runs_offline_and_prints_one_check_line(converted, tmp_path):
    dst = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(ROOT / "convert_llava_next_weights_to_hf.sh"), str(converted.src), str(dst)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = [line for line in proc.stdout.splitlines() if line.startswith("check: ")]
    assert len(checks) == 1 and "tokens_equal=True" in checks[0], proc.stdout
    assert json.loads((dst / "config.json").read_text())["architectures"] == ["LlavaNextForConditionalGeneration"]


def test_refuses_a_model_transformers_cannot_express(tmp_path, tiny_llama_dir, tiny_clip_dir):
    """A `flat` merge has no LlavaNext equivalent: the converter stops and names the setting."""
    from llava.export.convert import convert

    src = make_checkpoint(tmp_path / "ckpt", tiny_llama_dir, tiny_clip_dir, "llama")
    config = json.loads((src / "config.json").read_text())
    config["mm_patch_merge_type"] = "flat"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mm_patch_merge_type='flat'"):
        convert(src, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("converted", ["llama-v1-clip"], indirect=True)
def test_chat_cli_streams_the_same_reply_from_both_folders(converted, tmp_path, capsys):
    """`python -m llava.serve.cli` on our checkpoint and on the converted folder, driven through stdin."""
    import io

    from llava.serve import cli

    image = tmp_path / "picture.png"
    generated_image(90, 50, seed=2).save(image)
    replies = {}
    for name, folder in (("ours", converted.src), ("hf", converted.dst)):
        argv = ["--model-path", str(folder), "--image-file", str(image), "--device", "cpu",
                "--temperature", "0", "--max-new-tokens", "5"]
        cli.main(argv, stdin=io.StringIO("What is this?\nAnd the colours?\n\n"))
        out = capsys.readouterr().out
        turns = [line for line in out.splitlines() if "ASSISTANT: " in line]
        assert len(turns) == 2, out
        replies[name] = turns
    assert replies["ours"] == replies["hf"]


@pytest.mark.parametrize("how", ["missing", "extra", "shape"])
def test_converter_refuses_a_checkpoint_whose_files_do_not_match(how, tmp_path, tiny_llama_dir, tiny_clip_dir, capsys):
    """from_pretrained would re-initialise a missing tensor and ignore an extra one; the converter counts the files."""
    from llava.export.convert import main

    src = make_checkpoint(tmp_path / "ckpt", tiny_llama_dir, tiny_clip_dir, "llama")
    weights = load_file(src / "model.safetensors")
    key = {"missing": "model.mm_projector.0.weight", "extra": "model.mm_projector.4.bias",
           "shape": "model.layers.0.self_attn.q_proj.weight"}[how]
    if how == "missing":
        del weights[key]
    elif how == "extra":
        weights[key] = torch.zeros(3)
    else:
        weights[key] = weights[key][:, :-1].clone()
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    assert main(["--model-path", str(src), "--output-dir", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert "convert: FAILED" in err and key in err
    assert not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("converted", ["qwen2-siglip"], indirect=True)
def test_check_refuses_a_converted_folder_missing_a_tensor(converted, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(converted.dst, bad)
    weights = load_file(bad / "model.safetensors")
    (key,) = [k for k in weights if k.endswith("image_newline")]
    del weights[key]
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model.image_newline'\]"):
        compare_with_hf(converted.model, converted.tokenizer, converted.image_processor, bad, converted.conv_mode)
