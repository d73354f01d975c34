"""`LLaVATrainer`: transformers' Trainer with LLaVA's optimizer groups, sampler and savers.

What it changes, and why:
- optimizer groups by module identity (projector, image_newline, vision
  tower, the rest = LLM), each at its own learning rate and split into decay /
  no-decay; frozen parameters never reach the optimizer;
- the modality-length grouped sampler (`--group_by_modality_length`);
- what a checkpoint holds: in the pretrain stage only `mm_projector.bin`
  (+ config) instead of the whole frozen model, with LoRA the adapter plus
  `non_lora_trainables.bin`, always with the optimizer, scheduler, RNG and
  trainer state, so every stage resumes exactly;
- token and padding counts for the throughput callback.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Trainer

from llava.train.sampler import ModalityLengthGroupedSampler
from llava.train.saving import (
    NON_LORA_FILE,
    PROJECTOR_FILE,
    gather_state,
    load_full_checkpoint,
    load_partial_state,
    lora_state,
    non_lora_trainables,
    projector_named_params,
)
from llava.train.throughput import ThroughputCallback


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def module_param_ids(model) -> dict[str, set[int]]:
    """ids of the parameters of each multimodal part; everything else belongs to the LLM."""
    inner = _unwrap_peft(model).get_model()
    parts = {"projector": set(), "vision_tower": set()}
    projector = getattr(inner, "mm_projector", None)
    if projector is not None:
        parts["projector"] |= {id(p) for p in projector.parameters()}
    newline = getattr(inner, "image_newline", None)
    if newline is not None:
        parts["projector"].add(id(newline))  # trained and saved with the projector
    tower = inner.get_vision_tower() if hasattr(inner, "get_vision_tower") else None
    if tower is not None:
        parts["vision_tower"] |= {id(p) for p in tower.parameters()}
    return parts


def trains_llm(model) -> bool:
    """True when some trainable parameter is the LLM's (not the projector, `image_newline` or the tower).

    When False (the projector stage, `--freeze_backbone`), a text-only batch
    reaches no trainable weight, so the data module must not produce one.
    """
    multimodal = set().union(*module_param_ids(model).values())
    return any(p.requires_grad and id(p) not in multimodal for p in model.parameters())


def build_param_groups(model, decay_names, learning_rate, weight_decay, projector_lr=None, tower_lr=None) -> list[dict]:
    """Optimizer groups: (llm, projector, vision_tower) x (decay, no_decay), trainable only, empty ones dropped.

    Each group carries a `name` (e.g. "projector_no_decay") for logs and tests.
    """
    parts = module_param_ids(model)
    lrs = {
        "llm": learning_rate,
        "projector": learning_rate if projector_lr is None else projector_lr,
        "vision_tower": learning_rate if tower_lr is None else tower_lr,
    }
    decay_names = set(decay_names)
    buckets: dict[tuple[str, bool], list] = {(part, d): [] for part in lrs for d in (True, False)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = next((k for k, ids in parts.items() if id(param) in ids), "llm")
        buckets[(part, name in decay_names)].append(param)
    groups = []
    for (part, decay), params in buckets.items():
        if params:
            groups.append({
                "name": f"{part}_{'decay' if decay else 'no_decay'}",
                "params": params,
                "lr": lrs[part],
                "weight_decay": weight_decay if decay else 0.0,
            })
    return groups


def needs_same_modality_across_ranks(args) -> bool:
    """True under multi-process ZeRO-3: there, a step where one rank's batch has images and another's has none
    desynchronises the parameter all-gathers (gloo aborts, NCCL hangs), so every step must be one modality."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(args.deepspeed) and args.world_size > 1 and is_deepspeed_zero3_enabled()


def check_modality_mix(args, dataset) -> None:
    """Refuse, before training, the mixed image/text data that would hang a multi-process ZeRO-3 run."""
    lengths = getattr(dataset, "modality_lengths", None)
    if not needs_same_modality_across_ranks(args) or lengths is None or args.group_by_modality_length:
        return
    n_image = sum(n > 0 for n in lengths)
    if 0 < n_image < len(lengths):
        raise ValueError(
            f"the data mixes {n_image} image and {len(lengths) - n_image} text-only samples; under ZeRO-3 with "
            f"{args.world_size} processes a step whose ranks disagree on images desynchronises DeepSpeed. "
            "Pass --group_by_modality_length True (every step is then one modality on all ranks)."
        )


class LLaVATrainer(Trainer):
    """Trainer for LLaVA models; `stage` is "pretrain" (projector only) or "finetune"."""

    def __init__(self, *args, stage: str = "finetune", image_processor=None, lora_bias: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
        self.stage = stage
        self.image_processor = image_processor
        self.lora_bias = lora_bias
        base = _unwrap_peft(self.model)
        layout = base.get_image_layout() if getattr(base.config, "mm_vision_config", None) else None
        self.throughput = ThroughputCallback(layout, getattr(base.config, "tokenizer_model_max_length", None))
        # First, so that the reporters and the printer see the keys it adds to the logs.
        self.callback_handler.callbacks.insert(0, self.throughput)

    # ---- optimizer and sampler ----
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = build_param_groups(
            opt_model,
            self.get_decay_parameter_names(opt_model),
            self.args.learning_rate,
            self.args.weight_decay,
            getattr(self.args, "mm_projector_lr", None),
            getattr(self.args, "mm_vision_tower_lr", None),
        )
        if not groups:
            raise ValueError("no trainable parameters: every parameter has requires_grad=False")
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not getattr(self.args, "group_by_modality_length", False) or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = getattr(dataset, "modality_lengths", None)
        if lengths is None:
            raise ValueError(f"--group_by_modality_length needs dataset.modality_lengths; {type(dataset).__name__} has none")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(
            lengths,
            batch_size=self.args.train_batch_size,
            num_chunks=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=seed,
            pure=needs_same_modality_across_ranks(self.args),
            world_size=self.args.world_size,
        )

    # ---- throughput counts ----
    def training_step(self, model, inputs, num_items_in_batch=None):
        images = inputs.get("images")
        tiles = sum(int(t.shape[0]) if t.dim() == 4 else 1 for t in images) if isinstance(images, list) else 0
        self.throughput.add_batch(inputs, tiles)
        return super().training_step(model, inputs, num_items_in_batch)

    # ---- saving and loading ----
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Full model in the finetune stage; compact trainables in the pretrain and LoRA cases.

        Called on every rank (ZeRO-3 gathers are collective); only the main process writes.
        """
        output_dir = output_dir or self.args.output_dir
        base = _unwrap_peft(self.model)
        if self.stage == "pretrain":
            state = gather_state(projector_named_params(base))
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                base.config.save_pretrained(output_dir)
                torch.save(state, os.path.join(output_dir, PROJECTOR_FILE))
        elif base is not self.model:  # PEFT: adapter + everything else that trains
            adapter = lora_state(self.model, self.lora_bias)
            extra = gather_state(non_lora_trainables(self.model))
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                base.config.save_pretrained(output_dir)
                self.model.save_pretrained(output_dir, state_dict=adapter)
                torch.save(extra, os.path.join(output_dir, NON_LORA_FILE))
        else:
            super().save_model(output_dir, _internal_call)  # weights, config and tokenizer
        if self.args.should_save:
            if base is not self.model or self.stage == "pretrain":
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
            if self.image_processor is not None:  # preprocessor_config.json, read by load_pretrained_model
                self.image_processor.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume from our compact checkpoints as well as from full ones."""
        folder = Path(resume_from_checkpoint)
        model = self.model if model is None else model
        base = _unwrap_peft(model)
        if self.stage == "pretrain" and (folder / PROJECTOR_FILE).is_file():
            weights = torch.load(folder / PROJECTOR_FILE, map_location="cpu", weights_only=True)
            load_partial_state(base, weights, str(folder / PROJECTOR_FILE))
            return
        if base is model and ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
            load_full_checkpoint(model, folder)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # PEFT adapters
        if (folder / NON_LORA_FILE).is_file():
            weights = torch.load(folder / NON_LORA_FILE, map_location="cpu", weights_only=True)
            load_partial_state(model, weights, str(folder / NON_LORA_FILE))
