"""LLaVA training entry point: `python llava/train/train.py ...` with LLaVA's flags.

The orchestration only: parse arguments, build tokenizer, model and vision
modules, set what trains in this stage, build the data, train (resuming from
the newest `output_dir/checkpoint-*`, as LLaVA does), save. The pieces live in
sibling modules: `arguments`, `model_setup`, `lora`, `llava_trainer`,
`saving`, `throughput`.

Also runs as `python -m llava.train.train`, under `torchrun`, and under the
`deepspeed` launcher (usually through `train_mem.py`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: Python put llava/train/ first on sys.path; put the repository root there instead.
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path[0] = str(_here.parents[1])

import transformers  # noqa: E402

from llava.data import make_supervised_data_module  # noqa: E402
from llava.data.collator import DataCollatorForPackedSequences  # noqa: E402
from llava.data.preprocess import preprocess  # noqa: E402,F401  (LLaVA's `llava.train.train.preprocess`)
from llava.model.attention import use_packed_attention  # noqa: E402
from llava.model.fused_loss import enable_liger_kernel  # noqa: E402
from llava.model.reference import keep_sentencepiece  # noqa: E402
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments, parse_args  # noqa: E402,F401
from llava.train.llava_trainer import LLaVATrainer, check_modality_mix, trains_llm  # noqa: E402
from llava.train.lora import apply_lora, check_quantization_supported  # noqa: E402
from llava.train.model_setup import (  # noqa: E402
    allow_frozen_quantized_llm,
    choose_pad_token,
    init_vision,
    load_model,
    load_tokenizer,
    set_trainable,
)
from llava.vision_config import layout_from_args  # noqa: E402

logger = logging.getLogger(__name__)


def build(model_args, data_args, training_args):
    """Tokenizer, model (stage set up) and data module, exactly as `train` uses them."""
    check_quantization_supported(training_args.bits)
    if model_args.vision_tower is None:
        raise ValueError("--vision_tower is required: this package trains LLaVA models (got none)")
    transformers.set_seed(training_args.seed)  # the projector / image_newline init is reproducible
    tokenizer = load_tokenizer(model_args, training_args)
    model = load_model(model_args, training_args)
    added = choose_pad_token(tokenizer)
    if added is not None:
        model.resize_token_embeddings(len(tokenizer))
    layout = layout_from_args(model_args, data_args)
    tower = init_vision(model, model_args, layout, training_args)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # reentrant checkpointing needs inputs that require grad
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    set_trainable(model, model_args, training_args)
    allow_frozen_quantized_llm(model, model_args, training_args)
    data_module = make_supervised_data_module(
        tokenizer, data_args, version=model_args.version, layout=layout, image_processor=tower.image_processor,
        model_max_length=training_args.model_max_length,
        require_images=not trains_llm(model),  # text-only samples would train nothing: skip and count
    )
    if training_args.packing:
        data_module["data_collator"] = DataCollatorForPackedSequences(tokenizer)  # docs/Packing.md
        use_packed_attention(model)  # sdpa -> per-sample sdpa; flash-attn runs varlen as it is
    if training_args.use_liger_kernel:
        enable_liger_kernel(model)  # our wrappers' own path; warns and trains plainly without liger-kernel or a GPU
        training_args.use_liger_kernel = False  # the Trainer's own call knows only plain HF model types
    return tokenizer, model, data_module


def train(attn_implementation: str | None = None, argv: list[str] | None = None):
    """Parse `argv` (default sys.argv), train, save; returns the trainer.

    `attn_implementation` is the default for `--attn_implementation`
    (train_mem.py passes flash_attention_2, which falls back to sdpa).
    """
    overrides = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model_args, data_args, training_args = parse_args(argv, **overrides)
    if training_args.world_size > 1 and not training_args.deepspeed and training_args.ddp_find_unused_parameters is None:
        # A rank whose batch has no image leaves the projector without gradients; DDP must not wait for them.
        training_args.ddp_find_unused_parameters = True
    tokenizer, model, data_module = build(model_args, data_args, training_args)
    trainer = LLaVATrainer(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        stage="pretrain" if model_args.tune_mm_mlp_adapter else "finetune",
        image_processor=data_module["train_dataset"].image_processor,
        lora_bias=training_args.lora_bias,
        **data_module,
    )
    check_modality_mix(training_args, data_module["train_dataset"])
    # An explicit --resume_from_checkpoint, else the newest complete checkpoint (LLaVA's automatic resume);
    # the trainer checks it (files, layout, data order) and prints the resume line.
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or True)
    data_module["train_dataset"].log_summary()  # every skipped kind, decode errors met in training included
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():  # the reference code's tokenizers read tokenizer.model
        keep_sentencepiece(model_args.model_name_or_path, training_args.output_dir)
    return trainer


if __name__ == "__main__":
    train()
