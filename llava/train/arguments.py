"""LLaVA's three argument dataclasses and the command-line parsing around them.

The field names, defaults and meanings follow LLaVA's `train.py`, so its launch
scripts run unchanged. Flags that transformers has since renamed or removed
(`--evaluation_strategy`, `--warmup_ratio`, `--group_by_length`, ...) are
translated before parsing by `translate_legacy_argv`, so old scripts keep
working; each translation is logged once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import transformers

from llava.anyres import DEFAULT_ASPECT_RATIO, DEFAULT_MERGE_TYPE, DEFAULT_SELECT_FEATURE
from llava.constants import DEFAULT_MODEL_MAX_LENGTH, DEFAULT_VERSION

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which LLM and vision tower to build, and how they are joined."""

    model_name_or_path: str | None = field(
        default="facebook/opt-125m", metadata={"help": "Folder (or hub id) of the LLM, or of a LLaVA checkpoint."}
    )
    version: str | None = field(
        default=DEFAULT_VERSION,
        metadata={"help": "Conversation template name (conv_templates key): plain, v1, llava_llama_3, qwen_1_5, ..."},
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Freeze the LLM decoder (embeddings, layers, final norm); lm_head still trains."}
    )
    tune_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "Pretrain stage: train only the projector (and image_newline); save mm_projector.bin."},
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "Folder of the CLIP / SigLIP vision model; None trains a text-only LLM."}
    )
    mm_vision_select_layer: int | None = field(
        default=-1, metadata={"help": "Hidden-state index of the vision tower whose features are projected (-2 in LLaVA scripts)."}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "mm_projector.bin from the pretrain stage (projector + image_newline) to start from."}
    )
    mm_projector_type: str | None = field(
        default="linear", metadata={"help": "Projector: linear, mlpNx_gelu (e.g. mlp2x_gelu) or identity."}
    )
    mm_use_im_start_end: bool = field(
        default=False, metadata={"help": "LLaVA flag: wrap images in <im_start>/<im_end> tokens (kept False for LLaVA-NeXT)."}
    )
    mm_use_im_patch_token: bool = field(
        default=False,
        metadata={
            "help": "LLaVA flag: add an <im_patch> token to the tokenizer. LLaVA defaulted to True but its scripts "
            "pass False; True is refused (LLaVA-NeXT never uses the token), so the default here is False."
        },
    )
    mm_patch_merge_type: str | None = field(
        default=DEFAULT_MERGE_TYPE, metadata={"help": "How tile features are merged: flat, spatial or spatial_unpad (LLaVA-NeXT)."}
    )
    mm_vision_select_feature: str | None = field(
        default=DEFAULT_SELECT_FEATURE, metadata={"help": "patch (drop CLS) or cls_patch (keep CLS) features of the vision tower."}
    )


@dataclass
class DataArguments:
    """Where the training data is and how images are prepared."""

    data_path: str | None = field(
        default=None, metadata={"help": "LLaVA-format JSON (list of {id, image, conversations}) or a mixture file."}
    )
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "LLaVA flag; samples are always tokenized lazily, in __getitem__."}
    )
    is_multimodal: bool = field(
        default=False, metadata={"help": "LLaVA flag; unused (every run here has a vision tower)."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder that the samples' image paths are relative to."})
    image_aspect_ratio: str = field(
        default=DEFAULT_ASPECT_RATIO, metadata={"help": "square, pad or anyres (LLaVA-NeXT); written into the model config."}
    )
    image_grid_pinpoints: str | None = field(
        default=None,
        metadata={"help": "anyres canvases as [[h, w], ...] pixels or LLaVA-NeXT's '(1x1),...,(3x3)' range; default: 5 grids."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder for the start-up scan's cache (one file per data/tokenizer/template/layout/"
                  "max-length combination; see docs/Data.md). Default: $LLAVA_DATA_CACHE_DIR, else "
                  "~/.cache/llava-next/data. 'none' scans on every rank at every start and keeps nothing."},
    )
    strict_data: bool = field(
        default=False,
        metadata={"help": "Stop at the first bad sample (missing/undecodable image, markers vs images, over-length); "
                  "by default bad samples are skipped and counted in the log."},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """transformers' TrainingArguments plus LLaVA's fields.

    Old spellings that transformers dropped are accepted on the command line:
    --evaluation_strategy (-> --eval_strategy), --warmup_ratio R (-> --warmup_steps R),
    --group_by_length (-> --train_sampling_strategy group_by_length),
    --no_cuda (-> --use_cpu), --overwrite_output_dir (ignored: LLaVA resumes from output_dir),
    --logging_dir D (-> TENSORBOARD_LOGGING_DIR), --per_gpu_*_batch_size (-> --per_device_*),
    --gradient_checkpointing (-> --activation_checkpointing). `--help` lists them too.
    """

    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for from_pretrained."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer name (transformers' OptimizerNames)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator's images / image_sizes are not forward() names the Trainer knows."}
    )
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Keep the projector (and image_newline) frozen."})
    mpt_attn_impl: str | None = field(default="triton", metadata={"help": "LLaVA flag for MPT models; unused (no MPT support)."})
    model_max_length: int = field(
        default=DEFAULT_MODEL_MAX_LENGTH, metadata={"help": "Maximum sequence length; sequences are right-padded and truncated to it."}
    )
    double_quant: bool = field(default=True, metadata={"help": "QLoRA: quantize the quantization constants too."})
    quant_type: str = field(default="nf4", metadata={"help": "QLoRA 4-bit data type: fp4 or nf4."})
    bits: int = field(default=16, metadata={"help": "LLM weight bits: 16 (no quantization), 8 or 4 (QLoRA, CUDA only)."})
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM's linear layers (PEFT)."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_weight_path: str = field(default="", metadata={"help": "LLaVA flag; unused."})
    lora_bias: str = field(default="none", metadata={"help": "Which biases train with LoRA: none, all or lora_only."})
    mm_vision_lora_enable: bool = field(
        default=False,
        metadata={"help": "Train the vision tower only through LoRA on its linear layers (XTuner's LLaVA-Llama-3 "
                  "finetune); the tower's own weights stay frozen, the branches take --mm_vision_tower_lr "
                  "(default --learning_rate). Combines with a full or a LoRA LLM; merged at load and conversion."},
    )
    mm_vision_lora_r: int = field(default=64, metadata={"help": "Vision-tower LoRA rank."})
    mm_vision_lora_alpha: int = field(default=16, metadata={"help": "Vision-tower LoRA alpha (scale = alpha / r)."})
    mm_vision_lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the vision-tower LoRA branch."})
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the projector and image_newline; default: --learning_rate."}
    )
    mm_vision_tower_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision tower when unfrozen; default: --learning_rate."}
    )
    unfreeze_mm_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower too."})
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "Batches hold only image or only text samples, grouped by length (LLaVA's sampler)."},
    )
    packing: bool = field(default=False, metadata={"help": "Padding-free batches: each micro-batch in one row, "
                          "attention kept within each sample (docs/Packing.md); same loss, no padding."})
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "LLM attention: flash_attention_2, sdpa or eager; default sdpa (train_mem.py: flash_attention_2, "
                  "falling back to sdpa when flash-attn is missing)."},
    )


# old flag -> new flag (same value)
_RENAMED = {
    "--evaluation_strategy": "--eval_strategy",
    "--warmup_ratio": "--warmup_steps",
    "--no_cuda": "--use_cpu",
    "--per_gpu_train_batch_size": "--per_device_train_batch_size",
    "--per_gpu_eval_batch_size": "--per_device_eval_batch_size",
    "--gradient_checkpointing": "--activation_checkpointing",
    "--gradient_checkpointing_kwargs": "--activation_checkpointing_kwargs",
}
# old boolean flag -> replacement argv when it is true
_BOOL_REPLACED = {"--group_by_length": ["--train_sampling_strategy", "group_by_length"]}
_DROPPED_BOOL = ("--overwrite_output_dir",)
LEGACY_HELP = (
    "Old flags still accepted (translated before parsing): "
    + ", ".join(f"{old} -> {new}" for old, new in _RENAMED.items())
    + ", --group_by_length -> --train_sampling_strategy group_by_length, --logging_dir D -> TENSORBOARD_LOGGING_DIR=D, "
    "--overwrite_output_dir (ignored: an output_dir with checkpoint-* resumes), "
    "--tf32 (ignored where the device has no TF32)."
)
_TRUE = ("", "true", "1", "yes")


def _split(arg: str, argv: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, next index) for `--flag=value` or `--flag value` (value None for a bare flag)."""
    if "=" in arg:
        flag, value = arg.split("=", 1)
        return flag, value, i + 1
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        return arg, argv[i + 1], i + 2
    return arg, None, i + 1


def translate_legacy_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Rewrite flags transformers renamed or removed into today's spelling.

    Returns the new argv and environment variables to set (only
    `TENSORBOARD_LOGGING_DIR` for `--logging_dir`). `--warmup_ratio` becomes
    `--warmup_steps` because transformers reads a value below 1 as a ratio.
    """
    out, env, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0]
        if flag in _RENAMED:
            flag, value, i = _split(arg, argv, i)
            if flag == "--warmup_ratio" and value is not None and not 0 <= float(value) < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {value}")
            new = _RENAMED[flag]
            logger.warning("%s is an old transformers flag; using %s", flag, new)
            out += [new] if value is None else [new, value]
        elif flag in _BOOL_REPLACED or flag in _DROPPED_BOOL:
            flag, value, i = _split(arg, argv, i)
            if flag in _BOOL_REPLACED and (value is None or value.lower() in _TRUE):
                out += _BOOL_REPLACED[flag]
            logger.warning("%s is an old transformers flag; translated or ignored", flag)
        elif flag == "--logging_dir":
            flag, value, i = _split(arg, argv, i)
            env["TENSORBOARD_LOGGING_DIR"] = value
        else:
            out.append(arg)
            i += 1
    return out, env


def parse_args(argv: list[str] | None = None, **overrides):
    """Parse (ModelArguments, DataArguments, TrainingArguments) from argv (default sys.argv[1:]).

    `overrides` set TrainingArguments defaults that the command line can still
    change (train_mem.py passes `attn_implementation`). `--tf32 True` on a
    machine without TF32 (CPU, pre-Ampere GPU) is dropped with a warning instead
    of failing, so one launch script serves every machine.
    """
    import os

    argv, env = translate_legacy_argv(list(sys.argv[1:] if argv is None else argv))
    os.environ.update(env)
    argv = _drop_unavailable_tf32(argv)
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), epilog=LEGACY_HELP)
    if overrides:
        parser.set_defaults(**overrides)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def _drop_unavailable_tf32(argv: list[str]) -> list[str]:
    from transformers.utils import is_torch_tf32_available

    if is_torch_tf32_available():
        return argv
    out, i = [], 0
    while i < len(argv):
        if argv[i].split("=", 1)[0] == "--tf32":
            _, value, i = _split(argv[i], argv, i)
            if value is None or value.lower() in _TRUE:
                logger.warning("--tf32 ignored: this device has no TF32 support")
            continue
        out.append(argv[i])
        i += 1
    return out
