"""Unit tests of the training helpers on small stand-in modules (no model download, seconds)."""


import pytest
import torch
from torch import nn

from llava.anyres import ImageLayout
from llava.constants import IMAGE_TOKEN_INDEX
from llava.train.arguments import parse_args, translate_legacy_argv
from llava.train.llava_trainer import build_param_groups, trains_llm
from llava.train.model_setup import choose_pad_token
from llava.train.sampler import ModalityLengthGroupedSampler, modality_length_grouped_indices
from llava.train.throughput import count_batch_tokens, device_peak_flops


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision_tower = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 8)
        self.layer = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.vision_tower = _Tower()
        self.mm_projector = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8))
        self.image_newline = nn.Parameter(torch.zeros(8))

    def get_vision_tower(self):
        return self.vision_tower


class _Model(nn.Module):
    """Same module layout as LlavaLlamaForCausalLM: model.{embed, layers, vision_tower, mm_projector}, lm_head."""

    def __init__(self):
        super().__init__()
        self.model = _Inner()
        self.lm_head = nn.Linear(8, 10, bias=False)

    def get_model(self):
        return self.model


def _decay_names(model):
    from transformers import Trainer

    return Trainer.get_decay_parameter_names(None, model)


def _groups_by_name(groups):
    return {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in groups}


def test_param_groups_finetune_with_tower():
    model = _Model()
    groups = build_param_groups(model, _decay_names(model), 2e-5, 0.1, projector_lr=1e-4, tower_lr=2e-6)
    assert _groups_by_name(groups) == {
        # embed, layer.weight, lm_head | layer.bias, norm.weight, norm.bias
        "llm_decay": (2e-5, 0.1, 3),
        "llm_no_decay": (2e-5, 0.0, 3),
        # projector.0.weight, projector.2.weight, image_newline | two biases
        "projector_decay": (1e-4, 0.1, 3),
        "projector_no_decay": (1e-4, 0.0, 2),
        # tower linear weight | linear bias, LayerNorm weight and bias
        "vision_tower_decay": (2e-6, 0.1, 1),
        "vision_tower_no_decay": (2e-6, 0.0, 3),
    }
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_param_groups_pretrain_only_projector_default_lr():
    model = _Model()
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    model.model.image_newline.requires_grad_(True)
    groups = build_param_groups(model, _decay_names(model), 1e-3, 0.0)
    assert _groups_by_name(groups) == {"projector_decay": (1e-3, 0.0, 3), "projector_no_decay": (1e-3, 0.0, 2)}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable


def test_modality_sampler_all_image_all_text_and_mixed():
    g = torch.Generator().manual_seed(0)
    for lengths in ([5, 9, 3, 7, 1, 4, 8, 2], [-5, -9, -3, -7, -1], [5, -9, 3, -7, 1, -4, 8, -2, 6, -6, 11]):
        order = modality_length_grouped_indices(lengths, batch_size=2, num_chunks=2, generator=g)
        assert sorted(order) == list(range(len(lengths)))


def test_modality_sampler_batches_hold_one_modality():
    lengths = [i + 1 for i in range(16)] + [-(i + 1) for i in range(16)]
    order = modality_length_grouped_indices(lengths, batch_size=4, num_chunks=2, generator=torch.Generator().manual_seed(3))
    batches = [order[k : k + 4] for k in range(0, len(order), 4)]
    assert all(len({lengths[i] > 0 for i in b}) == 1 for b in batches)
    # Within a megabatch (2 micro-batches of 4), the first micro-batch holds the longest sample.
    for k in range(0, len(batches), 2):
        mega = batches[k] + batches[k + 1]
        assert max(abs(lengths[i]) for i in mega) in [abs(lengths[i]) for i in batches[k]]


def test_modality_sampler_deterministic_per_epoch():
    lengths = [3, -2, 5, -7, 1, 9, -4, 6, 2, -8]
    a = ModalityLengthGroupedSampler(lengths, batch_size=2, num_chunks=1, seed=42)
    b = ModalityLengthGroupedSampler(lengths, batch_size=2, num_chunks=1, seed=42)
    b.set_epoch(1)
    first, again = list(a), list(a)
    assert first == again
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(b) != first  # a new epoch reshuffles (fixed seeds: checked to differ)


def test_legacy_flags_translated():
    argv, env = translate_legacy_argv(
        ["--evaluation_strategy", "no", "--warmup_ratio=0.03", "--group_by_length", "True",
         "--overwrite_output_dir", "--logging_dir", "/tmp/tb", "--gradient_checkpointing", "True", "--bf16", "False"]
    )
    assert argv == ["--eval_strategy", "no", "--warmup_steps", "0.03", "--train_sampling_strategy", "group_by_length",
                    "--activation_checkpointing", "True", "--bf16", "False"]
    assert env == {"TENSORBOARD_LOGGING_DIR": "/tmp/tb"}
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        translate_legacy_argv(["--warmup_ratio", "1.5"])


def test_parse_llava_flags(tmp_path):
    model_args, data_args, training_args = parse_args(
        ["--model_name_or_path", "m", "--version", "plain", "--vision_tower", "v", "--tune_mm_mlp_adapter", "True",
         "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
         "--mm_use_im_patch_token", "False", "--data_path", "d.json", "--image_folder", "imgs", "--lazy_preprocess", "True",
         "--image_aspect_ratio", "anyres", "--group_by_modality_length", "True", "--output_dir", str(tmp_path),
         "--evaluation_strategy", "no", "--warmup_ratio", "0.03", "--tf32", "True", "--model_max_length", "2048",
         "--mm_projector_lr", "2e-5", "--mm_vision_tower_lr", "2e-6", "--unfreeze_mm_vision_tower", "True",
         "--lora_enable", "True", "--lora_r", "128", "--lora_alpha", "256", "--use_cpu", "True"],
    )
    assert (model_args.version, model_args.tune_mm_mlp_adapter, model_args.mm_vision_select_layer) == ("plain", True, -2)
    assert (data_args.image_aspect_ratio, data_args.image_folder) == ("anyres", "imgs")
    assert training_args.eval_strategy == "no" and training_args.warmup_steps == 0.03
    assert (training_args.mm_projector_lr, training_args.mm_vision_tower_lr) == (2e-5, 2e-6)
    assert (training_args.lora_r, training_args.lora_alpha, training_args.model_max_length) == (128, 256, 2048)
    assert training_args.remove_unused_columns is False and training_args.group_by_modality_length is True


def test_pad_token_per_family(tokenizers):
    expected = {"llama2": "<unk>", "mistral": "<unk>", "llama3": "<|reserved_special_token_0|>", "qwen2": "<|endoftext|>"}
    for name, pad in expected.items():
        tok = tokenizers(name).__class__.from_pretrained(tokenizers(name).name_or_path)  # a fresh copy to modify
        assert choose_pad_token(tok) is None
        assert tok.pad_token == pad, name
        assert tok.pad_token_id != tok.convert_tokens_to_ids("<|eot_id|>") or name != "llama3"


def test_count_batch_tokens_after_splice():
    layout = ImageLayout(tile_size=56, patch_size=14, grid_pinpoints=((56, 112), (112, 56), (112, 112)))
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6, 0, 0], [1, 7, 8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    image_tokens = layout.num_tokens((40, 90))  # PIL size (90, 40)
    samples, tokens, padded = count_batch_tokens({"input_ids": ids, "attention_mask": mask, "image_sizes": [(90, 40)]},
                                                 layout, max_length=None)
    assert (samples, tokens) == (2, 3 + image_tokens + 6)
    assert padded == 2 * (3 + image_tokens)
    assert count_batch_tokens({"input_ids": ids, "attention_mask": mask, "image_sizes": [(90, 40)]}, layout, 8)[1:] == (14, 16)


def test_peak_table():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak_flops("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_on_cpu_fails_before_loading_anything(tmp_path):
    from llava.train.train import build

    args = parse_args(["--model_name_or_path", str(tmp_path / "missing-llm"), "--vision_tower", "v", "--bits", "4",
                       "--lora_enable", "True", "--output_dir", str(tmp_path), "--use_cpu", "True"])
    with pytest.raises(RuntimeError, match="--bits 4 .*needs a CUDA GPU"):
        build(*args)  # the LLM folder does not exist: the check must come before any loading


def test_modality_sampler_pure_tops_up_each_modality():
    lengths = [5, 9, 3, 7, 1, -4, -8, -2]  # 5 image, 3 text; megabatch 4
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, num_chunks=2, seed=1, pure=True)
    order = list(sampler)
    assert len(order) == len(sampler) == 8 + 4  # 5 -> 8 image slots, 3 -> 4 text slots
    megabatches = [order[k : k + 4] for k in range(0, len(order), 4)]
    assert all(len({lengths[i] > 0 for i in mb}) == 1 for mb in megabatches)
    assert set(order) == set(range(8))


def test_llava_token_flags_default_off(tmp_path):
    # LLaVA defaulted mm_use_im_patch_token to True, which our model refuses; omitting the flag must not crash.
    model_args, _, _ = parse_args(["--model_name_or_path", "m", "--data_path", "d.json", "--output_dir", str(tmp_path)])
    assert (model_args.mm_use_im_patch_token, model_args.mm_use_im_start_end) == (False, False)


def test_trains_llm_looks_at_module_identity():
    model = _Model()
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    model.model.image_newline.requires_grad_(True)
    model.model.vision_tower.requires_grad_(True)
    assert not trains_llm(model)  # projector stage (+ unfrozen tower): text-only samples reach no trained weight
    model.model.layer.weight.requires_grad_(True)
    assert trains_llm(model)
