"""Both training stages in-process on tiny models: what trains, optimizer groups, saved files, exact resume.

Each stage trains once (4 steps, checkpoint every 2) in a module fixture; the
tests then check that run and resume it from a copy holding only checkpoint-2.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model
from llava.train.arguments import parse_args
from llava.train.train import build, train
from train_support import changed, finetune_argv, groups_summary, make_data, pretrain_argv, snapshot

PROJECTOR_KEYS = {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                  "model.mm_projector.2.bias", "model.image_newline"}


def _initial_and_trained(argv):
    """Weights as built (same seed as the run) and the trainer after training."""
    _, model, _ = build(*parse_args(argv))
    before = snapshot(model)
    del model
    return before, train(argv=argv)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def pretrain_run(tiny_llama_dir, tiny_clip_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "llava-pretrain"
    argv = pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, out, save_steps=2, mm_projector_lr=2e-3)
    before, trainer = _initial_and_trained(argv)
    return argv, out, before, trainer


@pytest.fixture(scope="module")
def finetune_run(tiny_llama_dir, tiny_clip_dir, data, pretrain_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "llava-finetune"
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, pretrain_run[1] / "mm_projector.bin",
                         save_steps=2, learning_rate=1e-4, mm_projector_lr=1e-3, unfreeze_mm_vision_tower=True,
                         mm_vision_tower_lr=2e-5, weight_decay=0.1, group_by_modality_length=True)
    before, trainer = _initial_and_trained(argv)
    return argv, out, before, trainer


def test_pretrain_trains_only_projector_and_newline(pretrain_run):
    _, out, before, trainer = pretrain_run
    assert changed(before, trainer.model) == PROJECTOR_KEYS  # everything else bit-identical
    assert groups_summary(trainer.optimizer) == {"projector_decay": (2e-3, 0.0, 3), "projector_no_decay": (2e-3, 0.0, 2)}
    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    assert set(saved) == PROJECTOR_KEYS
    for key, value in saved.items():
        assert torch.equal(value, dict(trainer.model.named_parameters())[key].detach())
    assert (out / "config.json").is_file() and not (out / "model.safetensors").exists()
    ckpt = out / "checkpoint-2"
    assert {"mm_projector.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert not (ckpt / "model.safetensors").exists()  # compact: the frozen LLM and tower are not copied


def test_finetune_trains_llm_projector_and_unfrozen_tower(finetune_run, pretrain_run):
    _, out, before, trainer = finetune_run
    pretrained = torch.load(pretrain_run[1] / "mm_projector.bin", weights_only=True)
    for key in PROJECTOR_KEYS:  # the run started from the pretrain stage's projector and image_newline
        assert torch.equal(before[key], pretrained[key])
    names = changed(before, trainer.model)
    llm = {n for n in before if ".vision_tower." not in n and n not in PROJECTOR_KEYS}
    assert llm <= names and PROJECTOR_KEYS <= names
    tower = {n for n in before if ".vision_tower." in n}
    # select_layer -2 of a 2-layer CLIP: layer 0 and the embeddings get gradients; layer 1 and post_layernorm none.
    used = {n for n in tower if ".encoder.layers.0." in n or ".embeddings." in n or "pre_layrnorm" in n}
    assert names & tower == used
    assert groups_summary(trainer.optimizer) == {
        "llm_decay": (1e-4, 0.1, 16),  # embed_tokens, lm_head, 7 linear weights x 2 layers
        "llm_no_decay": (1e-4, 0.0, 5),  # 2 RMSNorms x 2 layers + final norm
        "projector_decay": (1e-3, 0.1, 3),  # 2 linear weights + image_newline
        "projector_no_decay": (1e-3, 0.0, 2),  # 2 biases
        # class/patch/position embeddings + 6 linear weights x 2 layers
        "vision_tower_decay": (2e-5, 0.1, 15),
        # 6 biases + 2 LayerNorms (weight, bias) per layer x 2, pre/post LayerNorm (weight, bias)
        "vision_tower_no_decay": (2e-5, 0.0, 24),
    }
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"} <= files
    _, loaded, _, _ = load_pretrained_model(out, None, out.name, device="cpu", torch_dtype="float32")
    reloaded = dict(loaded.named_parameters())
    for name, param in trainer.model.named_parameters():
        assert torch.equal(reloaded[name], param.detach()), name


def test_finetune_frozen_tower_is_bit_identical(tiny_llama_dir, tiny_clip_dir, data, pretrain_run, tmp_path):
    argv = finetune_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "out", pretrain_run[1] / "mm_projector.bin",
                         max_steps=1, warmup_ratio=0.0, freeze_mm_mlp_adapter=True, save_strategy="no")
    before, trainer = _initial_and_trained(argv)
    names = changed(before, trainer.model)
    assert not any(".vision_tower." in n for n in names)
    assert not names & PROJECTOR_KEYS  # --freeze_mm_mlp_adapter
    assert "lm_head.weight" in names and set(groups_summary(trainer.optimizer)) == {"llm_decay", "llm_no_decay"}


def _resume_from_checkpoint_2(argv, out, tmp_path):
    copy = tmp_path / out.name
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    new_argv = list(argv)
    new_argv[new_argv.index("--output_dir") + 1] = str(copy)
    trainer = train(argv=new_argv)
    assert trainer.state.global_step == 4
    assert trainer._initial_global_step == 2  # resumed at step 2, not retrained from the start
    return copy


def test_pretrain_resume_is_exact(pretrain_run, tmp_path):
    argv, out, _, _ = pretrain_run
    copy = _resume_from_checkpoint_2(argv, out, tmp_path)
    a = torch.load(out / "mm_projector.bin", weights_only=True)
    b = torch.load(copy / "mm_projector.bin", weights_only=True)
    for key in PROJECTOR_KEYS:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
    assert not torch.equal(a["model.mm_projector.0.weight"],
                           torch.load(out / "checkpoint-2" / "mm_projector.bin")["model.mm_projector.0.weight"])


def test_finetune_resume_is_exact(finetune_run, tmp_path):
    argv, out, _, _ = finetune_run
    copy = _resume_from_checkpoint_2(argv, out, tmp_path)
    a, b = load_file(out / "model.safetensors"), load_file(copy / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


def _tampered_copy(run, tmp_path, edit):
    """A copy of the run's checkpoint-2 with `edit(folder)` applied, and the argv resuming from it."""
    argv, out, _, _ = run
    copy = tmp_path / out.name
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    edit(copy / "checkpoint-2")
    new_argv = list(argv)
    new_argv[new_argv.index("--output_dir") + 1] = str(copy)
    return new_argv


@pytest.mark.parametrize("how", ["missing", "extra", "shape"])
def test_finetune_resume_refuses_a_checkpoint_whose_weights_do_not_match(how, finetune_run, tmp_path):
    from safetensors.torch import save_file

    key = {"missing": "model.layers.1.self_attn.o_proj.weight", "extra": "model.mm_projector.7.weight",
           "shape": "model.mm_projector.2.bias"}[how]

    def edit(folder):
        weights = load_file(folder / "model.safetensors")
        if how == "missing":
            del weights[key]
        elif how == "extra":
            weights[key] = torch.zeros(2, 2)
        else:
            weights[key] = weights[key][:3].clone()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match="weight files do not match") as err:
        train(argv=_tampered_copy(finetune_run, tmp_path, edit))
    assert key in str(err.value)


@pytest.mark.parametrize("how", ["no-newline", "shape"])
def test_pretrain_resume_refuses_a_wrong_projector_file(how, pretrain_run, tmp_path):
    def edit(folder):
        weights = torch.load(folder / "mm_projector.bin", weights_only=True)
        if how == "no-newline":
            del weights["model.image_newline"]
        else:
            weights["model.mm_projector.0.bias"] = weights["model.mm_projector.0.bias"][:1].clone()  # would broadcast
        torch.save(weights, folder / "mm_projector.bin")

    message = r"lacks \['model.image_newline'\]" if how == "no-newline" else r"model.mm_projector.0.bias \(1,\)"
    with pytest.raises((KeyError, ValueError), match=message):
        train(argv=_tampered_copy(pretrain_run, tmp_path, edit))


def test_missing_optimizer_or_scheduler_is_an_error_not_a_fresh_start(finetune_run, tmp_path):
    _, out, _, trainer = finetune_run
    for name in ("optimizer.pt", "scheduler.pt"):
        copy = tmp_path / name
        shutil.copytree(out / "checkpoint-2", copy)
        (copy / name).unlink()
        with pytest.raises(FileNotFoundError, match=name):
            trainer._load_optimizer_and_scheduler(str(copy))
        with pytest.raises(ValueError, match=f"{name} is missing"):
            trainer.check_resume(copy)
