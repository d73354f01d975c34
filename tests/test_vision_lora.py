"""Vision-tower LoRA (--mm_vision_lora_enable): what trains, save / resume, merge at load, HF conversion.

XTuner's LLaVA-Llama-3 finetune trains the whole LLM and the CLIP tower only
through LoRA. Tiny models, in-process, a few CPU steps each.
"""

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model
from llava.model.vision_lora import LoRABranch, add_vision_lora, merge_vision_lora, target_linears
from llava.train.arguments import parse_args
from llava.train.train import build, train
from train_support import REPO, changed, finetune_argv, make_data, pretrain_argv, snapshot

R, ALPHA = 4, 8
VISION_LORA = {"mm_vision_lora_enable": True, "mm_vision_lora_r": R, "mm_vision_lora_alpha": ALPHA,
               "mm_vision_lora_dropout": 0.0}
TOWER = "model.vision_tower.vision_tower."
BRANCHES = "model.vision_tower.vision_lora."
TOLERANCE = 1e-4  # 10x stricter than the converter's default --tolerance


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("vlora_data"))


@pytest.fixture(scope="module")
def projector(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlora_pre") / "pre"
    train(argv=pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, max_steps=2, save_strategy="no"))
    return out / "mm_projector.bin"


def _argv(tiny_llama_dir, tiny_clip_dir, data, projector, out, **flags):
    # 4 steps = one epoch of the 8 samples: a step after the first (where every `up` is still zero, so no `down`
    # gets a gradient) surely has images, whatever the order of the 2 text-only samples
    flags = {**VISION_LORA, "max_steps": 4, "warmup_ratio": 0.0, "save_strategy": "steps", "save_steps": 2, **flags}
    return finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, projector, **flags)


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path_factory):
    """A full-LLM + tower-LoRA finetune of 4 steps; (argv, parameters before, trainer, output folder)."""
    out = tmp_path_factory.mktemp("vlora") / "llava-vlora"
    argv = _argv(tiny_llama_dir, tiny_clip_dir, data, projector, out)
    _, fresh, _ = build(*parse_args(argv))
    before = snapshot(fresh)
    del fresh
    return argv, before, train(argv=argv), out


def _last_layer(model) -> int:
    return model.get_vision_tower().vision_tower.config.num_hidden_layers - 1


def test_branch_is_the_low_rank_update():
    """y = W x + b + alpha/r * up(down(x)); merging folds exactly that into W."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    tower = torch.nn.Module()
    tower.vision_tower = torch.nn.Sequential(linear)
    add_vision_lora(tower, r=2, alpha=6, dropout=0.0)
    branch = tower.vision_lora["0"]
    assert isinstance(branch, LoRABranch) and list(target_linears(tower)) == ["0"]
    torch.nn.init.normal_(branch.up.weight)
    x = torch.randn(3, 6)
    expected = x @ linear.weight.T + linear.bias + 3.0 * (x @ branch.down.weight.T @ branch.up.weight.T)
    torch.testing.assert_close(tower.vision_tower(x), expected)
    merge_vision_lora(tower)
    assert not hasattr(tower, "vision_lora") and not linear._forward_hooks
    torch.testing.assert_close(tower.vision_tower(x), expected, rtol=1e-5, atol=1e-5)


def test_trains_the_llm_fully_and_the_tower_only_through_lora(trained):
    _, before, trainer, out = trained
    model = trainer.model
    names = changed(before, model)
    everything = set(before)
    tower = {n for n in everything if n.startswith(TOWER)}
    branches = {n for n in everything if n.startswith(BRANCHES)}
    multimodal = {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                  "model.mm_projector.2.bias", "model.image_newline"}
    llm = everything - tower - branches - multimodal
    assert tower and llm and len(branches) == 2 * len(target_linears(model.get_vision_tower()))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == llm | branches | multimodal
    assert not names & tower  # the tower's own weights are bit-identical
    assert llm | multimodal <= names  # every LLM tensor trained
    # The branches of the layers whose output is used (features come from layer -2) trained, down and up;
    # the last layer's never sees a gradient.
    unused = {n for n in branches if n.startswith(f"{BRANCHES}encoder__layers__{_last_layer(model)}__")}
    assert unused and names & branches == branches - unused


def test_checkpoint_holds_the_branches_and_resumes_exactly(trained, tiny_llama_dir, tiny_clip_dir, data, projector,
                                                           tmp_path):
    import shutil

    argv, _, trainer, out = trained
    saved = load_file(out / "checkpoint-2" / "model.safetensors")
    assert any(k.startswith(BRANCHES) for k in saved)
    copy = tmp_path / out.name
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    argv = list(argv)
    argv[argv.index("--output_dir") + 1] = str(copy)
    resumed = train(argv=argv)
    final = dict(trainer.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, final[name], rtol=0, atol=1e-6, msg=name)


def _unprefixed(state: dict) -> dict:
    """Tower keys without the `vision_model.` level (on disk it depends on who saved them, in memory it is gone)."""
    return {k.removeprefix("vision_model."): v for k, v in state.items()}


def _merged_q_proj(base: torch.Tensor, params: dict, layer: int = 0) -> torch.Tensor:
    """Layer `layer`'s q_proj weight after merging: base + alpha/r * up @ down, from the trained `params`."""
    prefix = f"{BRANCHES}encoder__layers__{layer}__self_attn__q_proj."
    down, up = params[f"{prefix}down.weight"].detach(), params[f"{prefix}up.weight"].detach()
    return base + (up @ down) * (ALPHA / R)


def test_converts_to_hf_with_the_tower_merged(trained, tiny_clip_dir, tmp_path):
    """The logit check passes; the tower's linear weights moved by the LoRA update, its norms did not."""
    from llava.export.check import compare_with_hf
    from llava.export.convert import convert

    _, _, trainer, out = trained
    dst = tmp_path / "hf"
    model, tokenizer, image_processor, conv_mode = convert(out, dst)
    result = compare_with_hf(model, tokenizer, image_processor, dst, conv_mode)
    assert result.passed(TOLERANCE) and result.tokens_equal and result.prompt_ids_equal, result
    hf = load_file(dst / "model.safetensors")
    clip = _unprefixed(load_file(tiny_clip_dir / "model.safetensors"))
    hf_tower = _unprefixed({k.split("vision_tower.", 1)[1]: v for k, v in hf.items() if "vision_tower." in k})
    assert set(hf_tower) == set(clip)
    q = "encoder.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(hf_tower[q], _merged_q_proj(clip[q], dict(trainer.model.named_parameters())), rtol=1e-5, atol=1e-6)
    assert not torch.equal(hf_tower[q], clip[q])
    for key in clip:
        if "norm" in key:  # layer_norm1/2, pre_layrnorm, post_layernorm: untouched
            assert torch.equal(hf_tower[key], clip[key]), key
        if key.endswith(("_proj.weight", "fc1.weight", "fc2.weight")) and ".layers.0." in key:
            assert not torch.equal(hf_tower[key], clip[key]), key


def test_load_pretrained_model_merges_and_matches_the_converted_model(trained, tmp_path):
    from llava.export.check import compare_with_hf
    from llava.export.convert import convert

    _, _, _, out = trained
    dst = tmp_path / "hf"
    convert(out, dst)
    tokenizer, model, processor, _ = load_pretrained_model(out, None, out.name, device="cpu", torch_dtype="float32")
    assert not hasattr(model.get_vision_tower(), "vision_lora") and model.config.mm_vision_lora is None
    result = compare_with_hf(model, tokenizer, processor, dst, "vicuna_v1")
    assert result.passed(TOLERANCE) and result.tokens_equal and result.max_abs_logit_diff < 1e-4, result


def _merge_script():
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_with_a_lora_llm_saves_merges_and_loads(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path):
    """LLM LoRA + tower LoRA: the branches go to non_lora_trainables.bin; merge_lora_weights.py folds both."""
    out = tmp_path / "llava-both-lora"
    argv = _argv(tiny_llama_dir, tiny_clip_dir, data, projector, out, lora_enable=True, lora_r=8, lora_alpha=16,
                 lora_dropout=0.0, save_strategy="no")
    trainer = train(argv=argv)
    non_lora = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".vision_tower.vision_lora." in k for k in non_lora)
    assert not any(".vision_tower.vision_tower." in k for k in non_lora)  # the tower itself is not saved twice
    merged = tmp_path / "merged"
    _merge_script().main(["--model-path", str(out), "--model-base", str(tiny_llama_dir), "--save-model-path",
                          str(merged)])
    saved = load_file(merged / "model.safetensors")
    assert not any("vision_lora" in k for k in saved)
    _, model, _, _ = load_pretrained_model(merged, None, merged.name, device="cpu", torch_dtype="float32")
    clip = _unprefixed(load_file(tiny_clip_dir / "model.safetensors"))
    q = "encoder.layers.0.self_attn.q_proj.weight"
    weight = _unprefixed(dict(model.get_vision_tower().vision_tower.named_parameters()))[q]
    trained_params = {k.removeprefix("base_model.model."): v for k, v in trainer.model.named_parameters()}
    torch.testing.assert_close(weight, _merged_q_proj(clip[q], trained_params), rtol=1e-5, atol=1e-6)


def test_full_llm_checkpoint_merges_without_a_base(trained, tmp_path):
    """merge_lora_weights.py on a full-LLM + tower-LoRA checkpoint: no --model-base, a plain checkpoint out."""
    _, _, _, out = trained
    merged = tmp_path / "merged"
    _merge_script().main(["--model-path", str(out), "--save-model-path", str(merged)])
    assert not any("vision_lora" in k for k in load_file(merged / "model.safetensors"))
    _, model, _, _ = load_pretrained_model(merged, None, merged.name, device="cpu", torch_dtype="float32")
    assert model.config.mm_vision_lora is None


@pytest.mark.parametrize("flags,message", [
    ({"tune_mm_mlp_adapter": True}, "pretrain stage"),
    ({"unfreeze_mm_vision_tower": True}, "drop --unfreeze_mm_vision_tower"),
])
def test_refused_combinations(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path, flags, message):
    argv = _argv(tiny_llama_dir, tiny_clip_dir, data, projector, tmp_path / "x", **flags)
    with pytest.raises(ValueError, match=message):
        build(*parse_args(argv))
