"""Checkpoints that survive a kill, and resumes that cannot drift.

- A checkpoint is written into `output_dir/.partial-checkpoint-N` and renamed
  to `checkpoint-N` only when every rank has finished writing (the trainer's
  `_save_checkpoint`). A kill leaves at most a `.partial-*` folder, ignored.
- `checkpoint_problems(folder)` says why a folder cannot be resumed from: a
  file its layout needs (stage, LoRA, DeepSpeed, world size: recorded in
  `llava_resume.json`) is missing or unreadable (JSON that does not parse, a
  torch zip without its central directory, a safetensors file shorter than
  its header says). `newest_complete(output_dir)` skips, and reports, the
  incomplete ones.
- `ResumeContract`: what the data order depends on. A resume that changes
  any of it is refused with the old and new values (docs/Checkpoints.md).

DeepSpeed's engine states load without pickle: `llava.train.deepspeed_loads`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

from llava.model.weights import (
    NON_LORA_FILE,
    PROJECTOR_FILE,
    SAFE_WEIGHTS_FILE,
    SAFE_WEIGHTS_INDEX_FILE,
    safetensors_shapes,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
PARTIAL_PREFIX = ".partial-"
RESUME_FILE = "llava_resume.json"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_STEP = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def dataset_fingerprint(dataset) -> str:
    """A short hash of what the sampler orders: the kept-sample count and each sample's (modality) length.

    Works on any dataset with `__len__`; `modality_lengths` or `lengths`
    are used when the dataset has them (LazySupervisedDataset does).
    """
    lengths = getattr(dataset, "modality_lengths", None)
    if lengths is None:
        lengths = getattr(dataset, "lengths", None)
    payload = json.dumps([len(dataset), list(lengths) if lengths is not None else None])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ResumeContract:
    """What the order of samples, and so the resumed weights, depend on; stored in every checkpoint."""

    world_size: int
    """Number of training processes (data shards)."""
    per_device_train_batch_size: int
    """Samples per process and micro-batch."""
    gradient_accumulation_steps: int
    """Micro-batches per optimizer step."""
    seed: int
    """--seed: model init, dropout and (without --data_seed) the shuffle."""
    data_seed: int | None
    """--data_seed: the shuffle, when set."""
    group_by_modality_length: bool
    """Which sampler orders the data."""
    dataset_size: int
    """Samples kept after filtering (len of the training dataset)."""
    dataset_fingerprint: str
    """`dataset_fingerprint` of the training dataset."""
    packing: bool = False
    """--packing: samples packed into rows change what each step holds."""

    @classmethod
    def of_run(cls, args, dataset) -> ResumeContract:
        return cls(
            world_size=int(args.world_size),
            per_device_train_batch_size=int(args.per_device_train_batch_size),
            gradient_accumulation_steps=int(args.gradient_accumulation_steps),
            seed=int(args.seed),
            data_seed=args.data_seed,
            group_by_modality_length=bool(getattr(args, "group_by_modality_length", False)),
            dataset_size=len(dataset) if dataset is not None else 0,
            dataset_fingerprint=dataset_fingerprint(dataset) if dataset is not None else "",
            packing=bool(getattr(args, "packing", False)),
        )

    def differences(self, now: ResumeContract) -> list[str]:
        """'name: checkpoint X, now Y' for each field that changed."""
        old, new = dataclasses.asdict(self), dataclasses.asdict(now)
        return [f"{k}: checkpoint {old[k]!r}, now {new[k]!r}" for k in old if old[k] != new[k]]


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint holds, which decides the files it needs."""

    stage: str
    """"pretrain" (mm_projector.bin) or "finetune"."""
    lora: bool
    """PEFT adapter + non_lora_trainables.bin instead of full weights."""
    deepspeed: bool
    """DeepSpeed engine state (`latest`, `global_step*/`) instead of optimizer.pt / scheduler.pt."""
    world_size: int
    """Processes that wrote RNG states (and DeepSpeed optimizer shards)."""
    save_only_model: bool = False
    """--save_only_model: weights only, not resumable."""


def write_resume_file(folder, layout: CheckpointLayout, contract: ResumeContract) -> None:
    record = {"layout": dataclasses.asdict(layout), "contract": dataclasses.asdict(contract)}
    (Path(folder) / RESUME_FILE).write_text(json.dumps(record, indent=1))


def read_resume_file(folder) -> tuple[CheckpointLayout, ResumeContract]:
    record = json.loads((Path(folder) / RESUME_FILE).read_text())
    return CheckpointLayout(**record["layout"]), ResumeContract(**record["contract"])


def _readable(path: Path) -> str | None:
    """None when the file is whole enough to load, else why not (cheap: headers and zip directories only)."""
    try:
        if path.suffix == ".safetensors":
            safetensors_shapes(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):  # torch.save's format: a truncated file has no central directory
                pass
        elif path.stat().st_size == 0:
            return f"{path.name} is empty"
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return f"{path.name} is unreadable ({err})"
    return None


def _weight_files(folder: Path) -> list[str]:
    index = folder / SAFE_WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            return [SAFE_WEIGHTS_INDEX_FILE, *sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError):
            return [SAFE_WEIGHTS_INDEX_FILE]
    return [SAFE_WEIGHTS_FILE]


def _deepspeed_files(folder: Path, world_size: int) -> tuple[list[str], list[str]]:
    """(files to check, problems) of a DeepSpeed engine checkpoint: `latest`, and one optimizer shard per rank."""
    latest = folder / "latest"
    if not latest.is_file() or not latest.read_text().strip():
        return [], ["latest (DeepSpeed's tag file) is missing or empty"]
    tag = latest.read_text().strip()
    step_dir = folder / tag
    optim = sorted(step_dir.glob("*optim_states.pt"))
    model = sorted(step_dir.glob("*model_states.pt"))
    problems = []
    if len(optim) != world_size:
        problems.append(f"{tag}/ holds {len(optim)} optimizer shards, {world_size} expected")
    if not model:
        problems.append(f"{tag}/ holds no model states")
    return [str(p.relative_to(folder)) for p in optim + model], problems


def required_files(folder: Path, layout: CheckpointLayout) -> tuple[list[str], list[str]]:
    """(files the layout needs, problems found while listing them)."""
    files = [TRAINER_STATE_FILE]
    files += ["rng_state.pth"] if layout.world_size <= 1 else [f"rng_state_{i}.pth" for i in range(layout.world_size)]
    if layout.stage == "pretrain":
        files.append(PROJECTOR_FILE)
    elif layout.lora:
        files += [*ADAPTER_FILES, NON_LORA_FILE]
    elif not layout.deepspeed:
        files += _weight_files(folder)
    problems = []
    if layout.deepspeed:
        ds_files, problems = _deepspeed_files(folder, layout.world_size)
        files += ds_files
    else:
        files += [OPTIMIZER_FILE, SCHEDULER_FILE]
    return files, problems


def checkpoint_problems(folder) -> list[str]:
    """Why `folder` cannot be resumed from (empty when it is complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    try:
        layout, _ = read_resume_file(folder)
    except FileNotFoundError:
        return [f"{RESUME_FILE} is missing (not written by this package, or damaged)"]
    except (ValueError, TypeError, KeyError) as err:
        return [f"{RESUME_FILE} is unreadable ({err})"]
    if layout.save_only_model:
        return ["written with --save_only_model: it holds no optimizer, scheduler or RNG state"]
    files, problems = required_files(folder, layout)
    return problems + [p for p in (_readable(folder / name) for name in files) if p]


def checkpoint_folders(output_dir) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, oldest (smallest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def newest_complete(output_dir, report: bool = True) -> Path | None:
    """The newest complete `checkpoint-N`; each newer incomplete one (and any unfinished save) is reported.

    Raises when checkpoints exist but none is complete: starting over would
    then silently discard them.
    """
    root = Path(output_dir)
    partial = sorted(root.glob(PARTIAL_PREFIX + "*")) if root.is_dir() else []
    if report and partial:
        logger.warning("ignoring unfinished checkpoint save(s) %s (a run stopped while writing them)",
                       [p.name for p in partial])
    folders = checkpoint_folders(output_dir)
    skipped = []
    for folder in reversed(folders):
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        skipped.append(folder)
        if report:
            logger.warning("skipping incomplete %s: %s", folder.name, "; ".join(problems))
    if skipped:
        raise RuntimeError(f"{output_dir} holds checkpoints but none is complete ({[p.name for p in skipped]}); "
                           "repair or remove them, or pass --resume_from_checkpoint")
    return None


def check_resume(folder, layout: CheckpointLayout, contract: ResumeContract) -> str:
    """Raise unless `folder` is complete, of `layout` and of `contract`; returns the resume line to print."""
    folder = Path(folder)
    problems = checkpoint_problems(folder)
    if problems:
        raise ValueError(f"cannot resume from {folder}: " + "; ".join(problems))
    theirs, old = read_resume_file(folder)
    if (theirs.stage, theirs.lora, theirs.deepspeed) != (layout.stage, layout.lora, layout.deepspeed):
        raise ValueError(f"cannot resume from {folder}: it was written by a {theirs} run; this one is {layout}")
    changed = old.differences(contract)
    if changed:
        raise ValueError(
            f"cannot resume from {folder} exactly: {'; '.join(changed)}. The order of the samples depends on "
            "these; resume with the checkpoint's values, or train into a new --output_dir.")
    state = json.loads((folder / TRAINER_STATE_FILE).read_text())
    return (f"resuming from {folder.name}: step {state.get('global_step')}, epoch {state.get('epoch') or 0:.3g}; "
            f"{old.world_size} process(es) x batch {old.per_device_train_batch_size} x accumulation "
            f"{old.gradient_accumulation_steps}, {old.dataset_size} samples (fingerprint {old.dataset_fingerprint}, "
            f"seed {old.seed})")


def publish(staging: Path, final: Path) -> None:
    """Rename a fully written checkpoint into place (atomic on one filesystem); an older copy is replaced."""
    if final.exists():
        old = final.with_name(PARTIAL_PREFIX + "replaced-" + final.name)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


def rotate(output_dir, save_total_limit: int | None, keep=()) -> list[Path]:
    """Delete the oldest checkpoints beyond `save_total_limit`; never the newest complete one nor `keep`.

    transformers' rotation keeps the newest folder by modification time,
    complete or not; a damaged newest folder could leave no resumable one.
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    folders = checkpoint_folders(output_dir)
    protected = {Path(k).resolve() for k in keep if k}
    for folder in reversed(folders):
        if not checkpoint_problems(folder):
            protected.add(folder.resolve())
            break
    excess = len(folders) - max(save_total_limit, len(protected & {f.resolve() for f in folders}))
    deleted = []
    for folder in folders:
        if len(deleted) >= excess:
            break
        if folder.resolve() not in protected:
            shutil.rmtree(folder)
            deleted.append(folder)
    return deleted
