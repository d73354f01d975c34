"""The launch scripts under scripts/next and scripts/xtuner carry their reference recipes, with flags train.py knows.

Each script runs for real under bash, with a fake `torchrun` and a fake
`deepspeed` first on PATH that record their argv. The recorded training flags
must parse with the HfArgumentParser of llava.train.train (no unknown flag),
the recipe values are compared with literal numbers from the LLaVA-NeXT and
XTuner recipes, and the launcher must receive the node count, this node's rank
and the master's address from the environment (scripts/common.sh).
"""

import ast
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
NEXT = SCRIPTS / "next"
XTUNER = SCRIPTS / "xtuner" / "llava-llama3-8b"
TRAIN_ENTRY = "llava/train/train_mem.py"

FAKE_LAUNCHER = """#!/usr/bin/env bash
# Stands in for torchrun / deepspeed: record its own name and argv (NUL-separated) and succeed.
printf '%s\\0' "$(basename "$0")" "$@" > "$FAKE_LAUNCH_LOG"
"""
# What the launch environment may hold; every run starts without them unless the test sets them.
LAUNCH_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE", "NPROC_PER_NODE")
ONE_NODE = {"--nnodes": "1", "--node_rank": "0", "--master_addr": "127.0.0.1", "--master_port": "29500"}

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
XTUNER_SCRIPTS = ["pretrain.sh", "finetune.sh", "pretrain_v1.1.sh", "finetune_v1.1.sh",
                  "pretrain_quant_gpu1.sh", "finetune_qlora_gpu1.sh"]
# Every GPU script, as a path under scripts/
GPU_SCRIPTS = [f"next/{s}" for s, _, _ in REFERENCE] + [f"next/{s}" for s in LORA] + [
    f"xtuner/llava-llama3-8b/{s}" for s in XTUNER_SCRIPTS]

# Hardware switches that TrainingArguments validates against the machine
# (tf32 needs an Ampere GPU, bf16 a GPU unless use_cpu, --deepspeed builds a
# process-wide DeepSpeed plugin); they are checked literally below, then left
# out of the dataclass build.
HARDWARE_FLAGS = ("--deepspeed", "--tf32", "--bf16")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("fakebin")
    for name in ("torchrun", "deepspeed"):
        fake = bin_dir / name
        fake.write_text(FAKE_LAUNCHER)
        fake.chmod(0o755)
    return bin_dir


def run_script(bin_dir, script, **env_vars):
    """Run scripts/<script> with the fake launchers; return (launcher name, launcher options, training flags)."""
    log = bin_dir / f"{uuid.uuid4().hex}.argv"
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LAUNCH_LOG=str(log), **env_vars)
    proc = subprocess.run(["bash", str(SCRIPTS / script)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{script} failed: {proc.stderr}"
    argv = log.read_text().split("\0")[:-1]
    assert argv.count(TRAIN_ENTRY) == 1, f"{script} does not launch {TRAIN_ENTRY} once: {argv}"
    cut = argv.index(TRAIN_ENTRY)
    return argv[0], argv[1:cut], argv[cut + 1 :]


@pytest.fixture(scope="module")
def launch(fake_bin):
    """Run a scripts/next script on one node (no launch variables set); return (launcher options, training flags)."""
    cache = {}

    def run(script):
        if script not in cache:
            name, options, args = run_script(fake_bin, f"next/{script}")
            assert name == "torchrun", f"{script}: one node launches through torchrun, got {name}"
            cache[script] = options, args
        return cache[script]

    return run


def flag_values(args):
    """{'--flag': 'value'}: every training flag takes exactly one value in our scripts."""
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), f"not flag/value pairs: {args}"
    flags = args[::2]
    assert len(set(flags)) == len(flags), f"a flag is repeated: {flags}"
    return dict(zip(flags, args[1::2]))


def num_gpus(launcher_args):
    """Processes per node from torchrun's options, which must be one node's defaults."""
    options = flag_values(launcher_args)
    assert {k: options[k] for k in ONE_NODE} == ONE_NODE, f"launcher options {launcher_args}"
    assert set(options) == {*ONE_NODE, "--nproc_per_node"}, f"launcher options {launcher_args}"
    return int(options["--nproc_per_node"])


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


@pytest.mark.parametrize("script", GPU_SCRIPTS + ["next/tiny/pretrain.sh", "next/tiny/finetune.sh"])
def test_script_shape(script):
    """Plain bash: `set -e`, editable variables on top, one launch through scripts/common.sh, no checks in bash."""
    text = (SCRIPTS / script).read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -e" in lines
    assert sum(line.startswith("source ./scripts/common.sh ") for line in lines) == 1
    word = "launch_cpu " if "/tiny/" in script else "launch "
    assert sum(line.startswith(word) for line in lines) == 1
    for word in ("if ", "[[", "[ ", "exit ", "test ", "deepspeed ", "torchrun ", "python "):
        assert not any(line.startswith(word) for line in lines), f"{script}: launchers and checks do not belong here"
    assert os.access(SCRIPTS / script, os.X_OK)


def test_common_holds_only_the_launcher():
    """The recipe stays in each script: common.sh names no training flag and no training entry point."""
    text = (SCRIPTS / "common.sh").read_text()
    assert TRAIN_ENTRY not in text and "--learning_rate" not in text and "--deepspeed " not in text


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python in the tiny scripts: record argv (NUL-separated) and succeed.
printf '%s\\0' "$@" > "$FAKE_PYTHON_LOG"
"""
# What only the GPU recipe needs (DeepSpeed, TF32, activation checkpointing, checkpoint cadence)
GPU_ONLY = {"--deepspeed", "--tf32", "--gradient_checkpointing", "--per_device_eval_batch_size",
            "--save_total_limit"}
CPU_ONLY = {"--use_cpu", "--max_steps", "--seed"}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_tiny_scripts_are_the_same_launch_at_tiny_size(launch, tmp_path, stage):
    """scripts/next/tiny/{stage}.sh: train_mem.py with the recipe's flags, less the GPU-only ones, on CPU."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "argv"
    env = clean_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", FAKE_PYTHON_LOG=str(log),
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
    assert (ns["save_strategy"], ns["save_steps"]) == ("no", 500)
    assert ns["version"] == ("plain" if stage == "pretrain" else "v1")
    assert ns["data_path"] == f"/nonexistent/work/data/{stage}.json"
    assert ast.literal_eval(ns["image_grid_pinpoints"]) == [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    if stage == "finetune":
        assert ns["pretrain_mm_mlp_adapter"] == "/nonexistent/work/pretrain/mm_projector.bin"
        assert ns["unfreeze_mm_vision_tower"] is True and ns["group_by_modality_length"] is True


# ---------------------------------------------------------------------------------------------------------
# Multi-node: the torchrun convention from the environment, or a DeepSpeed hostfile (scripts/common.sh)

TWO_NODES = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29611"}


def processes_per_node(script):
    text = (SCRIPTS / script).read_text()
    return 1 if "NUM_GPUS=1 " in text else 8


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_two_nodes_reach_torchrun(fake_bin, script):
    """NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT go to torchrun; the training flags do not change."""
    name, options, args = run_script(fake_bin, script, **TWO_NODES)
    assert name == "torchrun"
    assert options == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.7", "--master_port", "29611",
                       "--nproc_per_node", str(processes_per_node(script))]
    one_name, one_options, one_args = run_script(fake_bin, script)
    assert one_name == "torchrun" and flag_values(one_options) == {**ONE_NODE, "--nproc_per_node": options[-1]}
    assert args == one_args


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_hostfile_goes_to_the_deepspeed_launcher(fake_bin, script):
    gpus = str(processes_per_node(script))
    name, options, args = run_script(fake_bin, script, HOSTFILE="/shared/hostfile", MASTER_ADDR="10.0.0.7")
    assert name == "deepspeed"
    assert options == ["--hostfile", "/shared/hostfile", "--master_addr", "10.0.0.7", "--master_port", "29500",
                       "--num_gpus", gpus]
    assert args == run_script(fake_bin, script)[2]
    # NNODES keeps the first hosts; without MASTER_ADDR deepspeed picks the first host itself
    _, options, _ = run_script(fake_bin, script, HOSTFILE="/shared/hostfile", NNODES="2")
    assert options == ["--hostfile", "/shared/hostfile", "--num_nodes", "2", "--master_port", "29500",
                       "--num_gpus", gpus]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_tiny_scripts_go_multi_node_through_torchrun(fake_bin, stage):
    """On CPU one process per node by default; several nodes or processes go through torchrun (gloo)."""
    script = f"next/tiny/{stage}.sh"
    name, options, args = run_script(fake_bin, script, WORK="/nonexistent/work", NNODES="2", NODE_RANK="1",
                                     MASTER_ADDR="127.0.0.1")
    assert (name, options) == ("torchrun", ["--nnodes", "2", "--node_rank", "1", "--master_addr", "127.0.0.1",
                                            "--master_port", "29500", "--nproc_per_node", "1"])
    assert args[:2] == ["--use_cpu", "True"]
    name, options, _ = run_script(fake_bin, script, WORK="/nonexistent/work", NPROC_PER_NODE="2")
    assert (name, options) == ("torchrun", ["--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
                                            "--master_port", "29500", "--nproc_per_node", "2"])


# ---------------------------------------------------------------------------------------------------------
# XTuner's LLaVA-Llama-3-8B recipes (xtuner/configs/llava/llama3_8b_instruct_clip_vit_large_p14_336/)

# script: (GPUs, per-device batch, accumulation, global batch, lr, max length with the 576 image tokens,
#          image_aspect_ratio (pad_image_to_square), save_steps, dataloader workers, data file)
XTUNER_RECIPES = {
    "pretrain.sh": (8, 32, 1, 256, 1e-3, 2048, "square", 500, 0,
                    "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"),
    "finetune.sh": (8, 8, 2, 128, 2e-5, 2048, "pad", 1000, 0, "./playground/data/llava_v1_5_mix665k.json"),
    "pretrain_v1.1.sh": (8, 16, 2, 256, 1e-3, 4096, "square", 1000, 4,
                         "./playground/data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"),
    "finetune_v1.1.sh": (8, 4, 4, 128, 2e-5, 4096, "pad", 1000, 4, "./scripts/xtuner/llava-llama3-8b/internvl_sft.yaml"),
    "pretrain_quant_gpu1.sh": (1, 1, 32, 32, 1e-3, 2048, "square", 50000, 0,
                               "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"),
    "finetune_qlora_gpu1.sh": (1, 1, 16, 16, 2e-5, 2048, "pad", 50000, 0, "./playground/data/llava_v1_5_mix665k.json"),
}


@pytest.mark.parametrize("script", XTUNER_SCRIPTS)
def test_xtuner_recipe(fake_bin, script):
    name, options, args = run_script(fake_bin, f"xtuner/llava-llama3-8b/{script}")
    assert name == "torchrun"
    ns, model_args, data_args, training_args = parse(args)
    gpus, batch, accum, global_batch, lr, max_len, aspect, save_steps, workers, data = XTUNER_RECIPES[script]
    assert num_gpus(options) == gpus
    assert (ns["per_device_train_batch_size"], ns["gradient_accumulation_steps"]) == (batch, accum)
    assert gpus * batch * accum == global_batch
    assert ns["learning_rate"] == lr and ns["model_max_length"] == max_len
    assert ns["image_aspect_ratio"] == aspect and ns["mm_patch_merge_type"] == "flat"
    assert (ns["save_strategy"], ns["save_steps"], ns["save_total_limit"]) == ("steps", save_steps, 2)
    assert ns["dataloader_num_workers"] == workers and ns["data_path"] == data
    # the same in all six: llama3_chat, CLIP-L/336, 2-layer MLP on layer -2, one epoch, AdamW wd 0, clip 1, 3% warmup
    assert ns["version"] == model_args.version == "llava_llama_3"
    assert ns["model_name_or_path"] == "./checkpoints/Meta-Llama-3-8B-Instruct"
    assert ns["vision_tower"] == "./checkpoints/clip-vit-large-patch14-336"
    assert ns["mm_projector_type"] == "mlp2x_gelu" and ns["mm_vision_select_layer"] == -2
    assert ns["num_train_epochs"] == 1.0 and ns["weight_decay"] == 0.0 and ns["max_grad_norm"] == 1.0
    assert ns["warmup_steps"] == 0.03 and ns["lr_scheduler_type"] == "cosine" and ns["seed"] == 1024
    assert ns["deepspeed"] == "./scripts/zero2.json" and zero_stage(ns["deepspeed"]) == 2
    assert ns["bf16"] is True and training_args.activation_checkpointing is True
    assert not ns["unfreeze_mm_vision_tower"]
    quantized = "gpu1" in script
    assert ns["bits"] == (4 if quantized else 16)
    if quantized:
        assert ns["double_quant"] is True and ns["quant_type"] == "nf4"
    if script.startswith("pretrain"):
        assert ns["tune_mm_mlp_adapter"] is True and not ns["lora_enable"] and not ns["mm_vision_lora_enable"]
        return
    assert not ns["tune_mm_mlp_adapter"] and ns["group_by_modality_length"] is True
    if quantized:  # QLoRA on the LLM (llm_lora r=64, alpha=16, dropout 0.05), tower frozen
        assert (ns["lora_enable"], ns["lora_r"], ns["lora_alpha"], ns["lora_dropout"]) == (True, 64, 16, 0.05)
        assert not ns["mm_vision_lora_enable"]
    else:  # the whole LLM, the tower through LoRA (visual_encoder_lora r=64, alpha=16, dropout 0.05)
        assert not ns["lora_enable"]
        assert (ns["mm_vision_lora_enable"], ns["mm_vision_lora_r"], ns["mm_vision_lora_alpha"],
                ns["mm_vision_lora_dropout"]) == (True, 64, 16, 0.05)


@pytest.mark.parametrize("pretrain,finetune", [("pretrain.sh", "finetune.sh"), ("pretrain_v1.1.sh", "finetune_v1.1.sh"),
                                               ("pretrain_quant_gpu1.sh", "finetune_qlora_gpu1.sh")])
def test_xtuner_finetune_starts_from_its_pretrain(fake_bin, pretrain, finetune):
    pre = flag_values(run_script(fake_bin, f"xtuner/llava-llama3-8b/{pretrain}")[2])
    fin = flag_values(run_script(fake_bin, f"xtuner/llava-llama3-8b/{finetune}")[2])
    assert fin["--pretrain_mm_mlp_adapter"] == pre["--output_dir"] + "/mm_projector.bin"
    assert pre["--model_name_or_path"] == fin["--model_name_or_path"] and pre["--vision_tower"] == fin["--vision_tower"]


def test_xtuner_internvl_sft_mixture():
    """XTuner's nine InternVL-SFT sources, each with its own image folder, all samples once."""
    spec = yaml.safe_load((XTUNER / "internvl_sft.yaml").read_text())
    root = "./playground/internvl_sft/"
    got = [(e["json_path"].removeprefix(root), e["image_folder"].removeprefix(root), e["sampling_strategy"])
           for e in spec["datasets"]]
    assert got == [
        ("sharegpt4v_instruct_gpt4-vision_cap100k.jsonl", "data", "all"),
        ("llava_instruct_150k_zh.jsonl", "data/coco", "all"),
        ("sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.jsonl", "data", "all"),
        ("dvqa_train_200k.jsonl", "data/dvqa", "all"),
        ("chartqa_train_18k.jsonl", "data/chartqa", "all"),
        ("ai2d_train_12k.jsonl", "data/ai2d", "all"),
        ("docvqa_train_10k.jsonl", "data/docvqa", "all"),
        ("geoqa+.jsonl", "data/geoqa+", "all"),
        ("synthdog_en.jsonl", "data/synthdog-en", "all"),
    ]


FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for srun: drop its options, run the command once per node of the allocation, as SLURM would.
while [ "${1#--}" != "$1" ]; do shift; done
for id in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$id FAKE_LAUNCH_LOG="$FAKE_LOG_DIR/node$id.argv" "$@"
done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# Stands in for `scontrol show hostnames LIST`.
printf 'gpu-a\\ngpu-b\\n'
"""


def test_slurm_example_runs_the_same_script_on_every_node(fake_bin, tmp_path):
    """scripts/slurm/train.sbatch: NNODES from the allocation, NODE_RANK per node, MASTER_ADDR its first host."""
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    script = "next/vicuna-7b/finetune.sh"
    env = clean_env(PATH=f"{tmp_path}{os.pathsep}{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_LOG_DIR=str(tmp_path),
                    SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_SUBMIT_DIR=str(ROOT))
    proc = subprocess.run(["bash", str(SCRIPTS / "slurm" / "train.sbatch"), f"scripts/{script}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    single = run_script(fake_bin, script)
    for rank in (0, 1):
        argv = (tmp_path / f"node{rank}.argv").read_text().split("\0")[:-1]
        cut = argv.index(TRAIN_ENTRY)
        assert argv[:cut] == ["torchrun", "--nnodes", "2", "--node_rank", str(rank), "--master_addr", "gpu-a",
                              "--master_port", "29500", "--nproc_per_node", "8"]
        assert argv[cut + 1 :] == single[2]


# ---------------------------------------------------------------------------------------------------------
# The frozen 4-bit LLM of the single-GPU pretrain (--bits 4 --tune_mm_mlp_adapter True)

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only error")
def test_quantized_pretrain_on_cpu_fails_clearly(fake_bin, tmp_path):
    from llava.train.arguments import parse_args
    from llava.train.train import build

    args = flag_values(run_script(fake_bin, "xtuner/llava-llama3-8b/pretrain_quant_gpu1.sh")[2])
    args = {k: v for k, v in args.items() if k not in HARDWARE_FLAGS}
    args.update({"--model_name_or_path": str(tmp_path / "missing-llm"), "--output_dir": str(tmp_path), "--use_cpu": "True"})
    with pytest.raises(RuntimeError, match="--bits 4 .*needs a CUDA GPU"):
        build(*parse_args([x for pair in args.items() for x in pair]))  # before any loading


class _QuantizedStandIn(__import__("torch").nn.Module):
    """What transformers' Trainer inspects of a bitsandbytes-loaded model."""

    is_quantized = True

    class hf_quantizer:  # noqa: N801 - mirrors the attribute name
        is_trainable = True
        is_qat_trainable = False


@pytest.mark.parametrize("stage,lora,accepted", [("pretrain", False, True), ("finetune", False, False),
                                                 ("finetune", True, False)])
def test_trainer_accepts_a_frozen_quantized_llm_only_under_the_projector(stage, lora, accepted):
    """Pretrain: the projector is the trainable part on the frozen 4-bit LLM; a finetune needs LoRA (PEFT) as before."""
    from types import SimpleNamespace

    from transformers.trainer_utils import validate_quantization_for_training

    from llava.train.model_setup import allow_frozen_quantized_llm

    model = _QuantizedStandIn()
    allow_frozen_quantized_llm(model, SimpleNamespace(tune_mm_mlp_adapter=stage == "pretrain"),
                               SimpleNamespace(bits=4, lora_enable=lora))
    if accepted:
        validate_quantization_for_training(model)
    else:
        with pytest.raises(ValueError, match="purely quantized"):
            validate_quantization_for_training(model)
