"""Shared helpers of the tests/test_train_*.py files: tiny data and LLaVA-style argument lists."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# PIL (width, height) of the test images: wide, square, tall, wide; they pick different anyres grids
IMAGE_SIZES = [(90, 40), (56, 56), (40, 100), (120, 70)]


def make_data(root: Path) -> Path:
    """Images + three LLaVA-format JSON files (pretrain: all images; finetune: mixed; text: no images)."""
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    images.mkdir(exist_ok=True)
    for i, (w, h) in enumerate(IMAGE_SIZES):
        Image.new("RGB", (w, h), (40 * i, 120, 200 - 30 * i)).save(images / f"{i}.png")

    def sample(k, image=True):
        human = ("<image>\n" if image else "") + f"Describe item {k}."
        # Answers of different lengths, so a mean over all tokens differs from a mean of per-sample means.
        answer = f"Item {k} is " + "very " * (3 * k) + ("red." if k % 2 else "blue.")
        conv = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
        return {"id": f"s{k}", **({"image": f"{k % 4}.png"} if image else {}), "conversations": conv}

    (root / "pretrain.json").write_text(json.dumps([sample(k) for k in range(8)]))
    (root / "finetune.json").write_text(json.dumps([sample(k, image=k % 4 != 3) for k in range(8)]))
    return root


def base_argv(llm: Path, clip: Path, data: Path, out: Path, **flags) -> list[str]:
    """LLaVA's launch-script flags (as in scripts/v1_5/*.sh), at tiny scale on CPU."""
    args = {
        "model_name_or_path": llm, "vision_tower": clip, "image_folder": data / "images", "output_dir": out,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
        "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "evaluation_strategy": "no", "save_strategy": "steps", "save_steps": 100, "learning_rate": 1e-3,
        "weight_decay": 0.0, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "logging_steps": 1,
        "model_max_length": 512, "dataloader_num_workers": 0, "lazy_preprocess": True, "report_to": "none",
        "use_cpu": True, "disable_tqdm": True, "seed": 0,
    }
    args.update(flags)
    argv = []
    for key, value in args.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def pretrain_argv(llm, clip, data, out, **flags):
    flags = {"version": "plain", "data_path": data / "pretrain.json", "tune_mm_mlp_adapter": True, **flags}
    return base_argv(llm, clip, data, out, **flags)


def finetune_argv(llm, clip, data, out, projector, **flags):
    flags = {"version": "v1", "data_path": data / "finetune.json", "pretrain_mm_mlp_adapter": projector, **flags}
    return base_argv(llm, clip, data, out, **flags)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict, model) -> set[str]:
    """Names of parameters that are not bit-identical to `before`."""
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def groups_summary(optimizer) -> dict[str, tuple[float, float, int]]:
    """{group name: (initial lr, weight decay, number of tensors)} of a (possibly wrapped) optimizer."""
    return {g["name"]: (g["initial_lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups}
