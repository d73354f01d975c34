"""The launch scripts under scripts/next carry the reference recipe, with flags train.py knows.

Each script runs for real under bash, with a fake `deepspeed` first on PATH
that records its argv. The recorded training flags must parse with the
HfArgumentParser of llava.train.train (no unknown flag), and the recipe values
are compared with literal numbers from the LLaVA-NeXT recipe (8 GPUs).
"""

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEXT = ROOT / "scripts" / "next"
TRAIN_ENTRY = "llava/train/train_mem.py"

FAKE_DEEPSPEED = """#!/usr/bin/env bash
# Stands in for the deepspeed launcher: record argv (NUL-separated) and succeed.
printf '%s\\0' "$@" > "$FAKE_DEEPSPEED_LOG"
"""

# (script, stage, conversation version)
REFERENCE = [
    ("vicuna-7b/pretrain.sh", "pretrain", "plain"),
    ("vicuna-7b/finetune.sh", "finetune", "v1"),
    ("llama3-8b/pretrain.sh", "pretrain", "plain"),
    ("llama3-8b/finetune.sh", "finetune", "llava_llama_3"),
    ("qwen2-7b/pretrain.sh", "pretrain", "plain"),
    ("qwen2-7b/finetune.sh", "finetune", "qwen_2"),
]
LORA = ["vicuna-7b/finetune_lora.sh", "vicuna-7b/finetune_qlora.sh"]

# Hardware switches that TrainingArguments validates against the machine
# (tf32 needs an Ampere GPU, bf16 a GPU unless use_cpu, --deepspeed builds a
# process-wide DeepSpeed plugin); they are checked literally below, then left
# out of the dataclass build.
HARDWARE_FLAGS = ("--deepspeed", "--tf32", "--bf16")


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Run a script with the fake launcher; return (launcher options, training flags)."""
    bin_dir = tmp_path_factory.mktemp("fakebin")
    fake = bin_dir / "deepspeed"
    fake.write_text(FAKE_DEEPSPEED)
    fake.chmod(0o755)
    cache = {}

    def run(script):
        if script not in cache:
            log = bin_dir / (script.replace("/", "_") + ".argv")
            env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_DEEPSPEED_LOG=str(log))
            proc = subprocess.run(["bash", str(NEXT / script)], cwd=ROOT, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, f"{script} failed: {proc.stderr}"
            argv = log.read_text().split("\0")[:-1]
            assert argv.count(TRAIN_ENTRY) == 1, f"{script} does not launch {TRAIN_ENTRY} once: {argv}"
            cut = argv.index(TRAIN_ENTRY)
            cache[script] = argv[:cut], argv[cut + 1 :]
        return cache[script]

    return run


def flag_values(args):
    """{'--flag': 'value'}: every training flag takes exactly one value in our scripts."""
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), f"not flag/value pairs: {args}"
    flags = args[::2]
    assert len(set(flags)) == len(flags), f"a flag is repeated: {flags}"
    return dict(zip(flags, args[1::2]))


def num_gpus(launcher_args):
    assert launcher_args[:1] == ["--num_gpus"], f"launcher options {launcher_args}"
    return int(launcher_args[1])


def parse(args):
    """Parse as train.py does: LLaVA's old flag spellings translated, unknown flags fail."""
    from transformers import HfArgumentParser

    from llava.train.arguments import translate_legacy_argv
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments

    args, _ = translate_legacy_argv(args)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    namespace, unknown = parser.parse_known_args(args)
    assert unknown == [], f"flags unknown to train.py: {unknown}"
    kept = []
    for flag, value in flag_values(args).items():
        if flag not in HARDWARE_FLAGS:
            kept += [flag, value]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(kept + ["--use_cpu", "True"])
    return vars(namespace), model_args, data_args, training_args


def check_common(ns, training_args):
    assert ns["mm_vision_select_layer"] == -2
    assert ns["mm_projector_type"] == "mlp2x_gelu"
    assert ns["image_aspect_ratio"] == "anyres"
    assert ns["mm_patch_merge_type"] == "spatial_unpad"
    assert ast.literal_eval(ns["image_grid_pinpoints"]) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert ns["vision_tower"].endswith("clip-vit-large-patch14-336")
    assert ns["model_max_length"] == 4096
    assert ns["bf16"] is True and ns["tf32"] is True
    # LLaVA's --gradient_checkpointing / --warmup_ratio, as transformers 5 names them
    assert ns["activation_checkpointing"] is True
    assert ns["num_train_epochs"] == 1.0
    assert ns["lr_scheduler_type"] == "cosine"
    assert ns["warmup_steps"] == 0.03  # --warmup_ratio 0.03; transformers 5 reads a value < 1 as a ratio
    assert ns["dataloader_num_workers"] == 4
    assert ns["lazy_preprocess"] is True
    assert training_args.report_to == ["wandb"]
    assert training_args.activation_checkpointing is True
    assert training_args.lr_scheduler_type == "cosine"
    assert training_args.warmup_steps == 0.03


def zero_stage(path):
    config = json.loads((ROOT / path).read_text())
    return config["zero_optimization"]["stage"]


@pytest.mark.parametrize("script,stage,version", REFERENCE)
def test_reference_recipe(launch, script, stage, version):
    launcher, args = launch(script)
    ns, model_args, data_args, training_args = parse(args)
    check_common(ns, training_args)
    gpus = num_gpus(launcher)
    assert gpus == 8
    assert ns["version"] == model_args.version == version
    batch, accum = ns["per_device_train_batch_size"], ns["gradient_accumulation_steps"]
    if stage == "pretrain":
        assert ns["deepspeed"] == "./scripts/zero2.json" and zero_stage(ns["deepspeed"]) == 2
        assert ns["learning_rate"] == 1e-3
        assert (batch, accum, batch * accum * gpus) == (8, 4, 256)
        assert ns["tune_mm_mlp_adapter"] is True
        assert ns["data_path"] == "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
        assert ns["image_folder"] == "./playground/data/LLaVA-Pretrain/images"
        assert not ns["unfreeze_mm_vision_tower"]
    else:
        assert ns["deepspeed"] == "./scripts/zero3.json" and zero_stage(ns["deepspeed"]) == 3
        assert ns["learning_rate"] == 2e-5
        assert (batch, accum, batch * accum * gpus) == (8, 2, 128)
        assert ns["mm_vision_tower_lr"] == 2e-6
        assert ns["unfreeze_mm_vision_tower"] is True
        assert ns["group_by_modality_length"] is True
        assert ns["data_path"] == "./playground/data/llava_v1_5_mix665k.json"
        assert ns["image_folder"] == "./playground/data"
        assert not ns["tune_mm_mlp_adapter"]


@pytest.mark.parametrize("model", ["vicuna-7b", "llama3-8b", "qwen2-7b"])
def test_finetune_starts_from_its_pretrain(launch, model):
    """Same LLM and tower in both stages; finetune reads the projector pretrain wrote."""
    pre = flag_values(launch(f"{model}/pretrain.sh")[1])
    fin = flag_values(launch(f"{model}/finetune.sh")[1])
    assert pre["--model_name_or_path"] == fin["--model_name_or_path"]
    assert pre["--vision_tower"] == fin["--vision_tower"]
    assert fin["--pretrain_mm_mlp_adapter"] == pre["--output_dir"] + "/mm_projector.bin"
    assert pre["--output_dir"] != fin["--output_dir"]


def test_converter_default_source_is_the_vicuna_finetune_output(launch):
    fin = flag_values(launch("vicuna-7b/finetune.sh")[1])
    text = (ROOT / "convert_llava_next_weights_to_hf.sh").read_text()
    assert fin["--output_dir"] == "./checkpoints/llava-next-vicuna-7b-sft"
    assert 'SRC="${1:-./checkpoints/llava-next-vicuna-7b-sft}"' in text
    assert 'DST="${2:-./checkpoints/llava-next-vicuna-7b-sft-hf}"' in text


@pytest.mark.parametrize("script", LORA)
def test_lora_single_gpu_recipe(launch, script):
    launcher, args = launch(script)
    ns, _, _, training_args = parse(args)
    check_common(ns, training_args)
    gpus = num_gpus(launcher)
    batch, accum = ns["per_device_train_batch_size"], ns["gradient_accumulation_steps"]
    assert gpus == 1 and batch * accum * gpus == 128
    assert ns["lora_enable"] is True and ns["lora_r"] == 128 and ns["lora_alpha"] == 256
    assert ns["bits"] == (4 if "qlora" in script else 16)
    assert ns["version"] == "v1"
    assert ns["pretrain_mm_mlp_adapter"] == "./checkpoints/llava-next-vicuna-7b-pretrain/mm_projector.bin"
    assert zero_stage(ns["deepspeed"]) == 2


@pytest.mark.parametrize("script", [s for s, _, _ in REFERENCE] + LORA)
def test_script_shape(script):
    """Plain bash: `set -e`, editable variables on top, one launch, no checks in bash."""
    text = (NEXT / script).read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -e" in lines
    assert sum(line.startswith("deepspeed ") for line in lines) == 1
    for word in ("if ", "[[", "exit ", "test "):
        assert not any(line.startswith(word) for line in lines), f"{script}: checks belong in Python"
    assert os.access(NEXT / script, os.X_OK)


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python in the tiny scripts: record argv (NUL-separated) and succeed.
printf '%s\\0' "$@" > "$FAKE_PYTHON_LOG"
"""
# What only the GPU recipe needs (DeepSpeed, TF32, activation checkpointing, checkpoint cadence)
GPU_ONLY = {"--deepspeed", "--tf32", "--gradient_checkpointing", "--per_device_eval_batch_size", "--save_steps",
            "--save_total_limit"}
CPU_ONLY = {"--use_cpu", "--max_steps", "--seed"}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_tiny_scripts_are_the_same_launch_at_tiny_size(launch, tmp_path, stage):
    """scripts/next/tiny/{stage}.sh: train_mem.py with the recipe's flags, less the GPU-only ones, on CPU."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "argv"
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", FAKE_PYTHON_LOG=str(log),
               WORK="/nonexistent/work")
    proc = subprocess.run(["bash", str(NEXT / "tiny" / f"{stage}.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    argv = log.read_text().split("\0")[:-1]
    assert argv[0] == TRAIN_ENTRY
    tiny = flag_values(argv[1:])
    real = flag_values(launch(f"vicuna-7b/{stage}.sh")[1])
    assert set(real) - set(tiny) == GPU_ONLY
    assert set(tiny) - set(real) == CPU_ONLY
    ns, _, _, _ = parse(argv[1:])
    assert ns["use_cpu"] is True and ns["model_max_length"] == 512
    assert ns["version"] == ("plain" if stage == "pretrain" else "v1")
    assert ns["data_path"] == f"/nonexistent/work/data/{stage}.json"
    assert ast.literal_eval(ns["image_grid_pinpoints"]) == [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    if stage == "finetune":
        assert ns["pretrain_mm_mlp_adapter"] == "/nonexistent/work/pretrain/mm_projector.bin"
        assert ns["unfreeze_mm_vision_tower"] is True and ns["group_by_modality_length"] is True
