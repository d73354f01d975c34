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
- how checkpoints are written and resumed (docs/Checkpoints.md): into a
  `.partial-*` folder renamed when complete; a resume must be complete, of
  the same layout and data order (`llava_resume.json`), and loads every
  tensor strictly; DeepSpeed engine states load without unpickling code;
- token and padding counts for the throughput callback.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from llava.model.weights import (
    NON_LORA_FILE,
    PEFT_PREFIX,
    PROJECTOR_FILE,
    load_full_checkpoint,
    load_partial_state,
    role_ids,
    safetensors_shapes,
    unwrap_peft,
)
from llava.train import checkpoints
from llava.train.deepspeed_loads import weights_only_deepspeed_loads
from llava.train.sampler import ModalityLengthGroupedSampler
from llava.train.saving import gather_state, lora_state, non_lora_trainables, projector_named_params
from llava.train.throughput import ThroughputCallback

logger = logging.getLogger(__name__)


def module_param_ids(model) -> dict[str, set[int]]:
    """ids of the parameters of each multimodal part; everything else belongs to the LLM."""
    return role_ids(model)


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
        base = unwrap_peft(self.model)
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
        base = unwrap_peft(self.model)
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

    # ---- checkpoints: atomic writes, strict and safe loads, the resume contract ----
    def _layout(self) -> checkpoints.CheckpointLayout:
        return checkpoints.CheckpointLayout(
            stage=self.stage, lora=unwrap_peft(self.model) is not self.model, deepspeed=self.is_deepspeed_enabled,
            world_size=int(self.args.world_size), save_only_model=bool(self.args.save_only_model))

    def resume_contract(self) -> checkpoints.ResumeContract:
        """What this run's data order depends on (the dataset fingerprint is computed once)."""
        if getattr(self, "_contract", None) is None:
            self._contract = checkpoints.ResumeContract.of_run(self.args, self.train_dataset)
        return self._contract

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, written into `.partial-checkpoint-N/` and renamed when every rank is done.

        A kill at any point leaves the previous `checkpoint-N` folders as they
        were; the rotation never deletes the newest complete one.
        """
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = run_dir / name, run_dir / (checkpoints.PARTIAL_PREFIX + name)
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)  # left by a run killed while saving this step
        self.accelerator.wait_for_everyone()
        self.save_model(str(staging), _internal_call=True)
        best_step = self.state.best_global_step
        if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and best_step:
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}"
            if best.exists() or best_step == self.state.global_step:
                self.state.best_model_checkpoint = str(best)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        if self.args.should_save:
            self._save_callback_states()
            self.state.save_to_json(str(staging / checkpoints.TRAINER_STATE_FILE))
            checkpoints.write_resume_file(staging, self._layout(), self.resume_contract())
        self.accelerator.wait_for_everyone()  # every rank's RNG state and DeepSpeed shards are written
        if self.args.should_save:
            checkpoints.publish(staging, final)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))
        if self.args.should_save:
            checkpoints.rotate(run_dir, self.args.save_total_limit, keep=[self.state.best_model_checkpoint])

    def _save_callback_states(self) -> None:
        """Record the `ExportableState` callbacks (and the control) into the trainer state, as transformers does."""
        for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
            name = cb.__class__.__name__
            if isinstance(self.state.stateful_callbacks[name], list):
                self.state.stateful_callbacks[name].append(cb.state())
            else:
                self.state.stateful_callbacks[name] = cb.state()

    def check_resume(self, folder) -> None:
        """Refuse a checkpoint that is incomplete, of another layout, or whose data order differs; then say so."""
        line = checkpoints.check_resume(folder, self._layout(), self.resume_contract())
        if self.args.should_log:
            logger.warning(line)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """transformers' train; `True` resumes from the newest complete checkpoint, any resume is checked first."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = checkpoints.newest_complete(self.args.output_dir, report=self.args.should_log)
        if resume_from_checkpoint:
            self.check_resume(resume_from_checkpoint)
            resume_from_checkpoint = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume our compact checkpoints as well as full ones; every tensor must match (names and shapes)."""
        folder = Path(resume_from_checkpoint)
        model = self.model if model is None else model
        base = unwrap_peft(model)
        if self.stage == "pretrain":
            weights = torch.load(folder / PROJECTOR_FILE, map_location="cpu", weights_only=True)
            names = [n for n, _ in projector_named_params(base)]
            load_partial_state(base, weights, str(folder / PROJECTOR_FILE), required=names, exact=True)
        elif base is model:
            load_full_checkpoint(model, folder)
        else:
            self._check_adapter_file(model, folder)
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # PEFT loads the adapter
            weights = torch.load(folder / NON_LORA_FILE, map_location="cpu", weights_only=True)
            names = [n.removeprefix(PEFT_PREFIX) for n, _ in non_lora_trainables(model)]
            load_partial_state(model, weights, str(folder / NON_LORA_FILE), required=names, exact=True)

    @staticmethod
    def _check_adapter_file(model, folder: Path) -> None:
        """PEFT's `load_adapter` reports missing or unexpected adapter tensors without failing; here they fail."""
        from peft import get_peft_model_state_dict

        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
        found = safetensors_shapes(folder / checkpoints.ADAPTER_FILES[1])
        if found != expected:
            diff = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
            raise ValueError(f"{folder / checkpoints.ADAPTER_FILES[1]} does not match the model's adapters: {diff[:8]}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        """transformers skips a missing optimizer.pt / scheduler.pt silently (a fresh optimizer); refuse instead."""
        if checkpoint is not None and not self.is_deepspeed_enabled:
            for name in (checkpoints.OPTIMIZER_FILE, checkpoints.SCHEDULER_FILE):
                if not (Path(checkpoint) / name).is_file():
                    raise FileNotFoundError(f"{Path(checkpoint) / name} is missing; resuming would restart the "
                                            "optimizer or the learning-rate schedule")
        super()._load_optimizer_and_scheduler(checkpoint)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """Under DeepSpeed, load the engine state here, with pickle-free loads, instead of transformers' loader."""
        if not (self.is_deepspeed_enabled and resume_from_checkpoint is not None):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        engine = self.model_wrapped
        with weights_only_deepspeed_loads(engine):
            load_path, _ = engine.load_checkpoint(
                resume_from_checkpoint, load_module_strict=unwrap_peft(self.model) is self.model,
                load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise ValueError(f"DeepSpeed found no engine state in {resume_from_checkpoint}")
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader
