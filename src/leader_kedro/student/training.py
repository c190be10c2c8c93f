"""Training, evaluation and teacher-feature alignment for LEADER(S). Importable without Kedro.

Adam, early stopping on val PRAUC (strict improvement, patience in epochs), best state reloaded,
seeded (python, numpy, torch, shuffling generator), tqdm progress, per-epoch loss terms and val
metrics logged to MLflow through :mod:`leader_kedro.tracking` (only when a run is active).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from leader_kedro import tracking
from leader_kedro.config import as_dict, build_config
from leader_kedro.contracts import (
    FEATURES_COMMAND,
    ParameterError,
    aligned_teacher_features,
    group_masks,
    label_matrix,
    prediction_matrix,
)
from leader_kedro.evaluation.metrics import average_precision_per_sample, summary
from leader_kedro.student.model import (
    LeaderStudent,
    StudentBundle,
    StudentModelConfig,
    collate,
    encode_samples,
    make_config,
    predict_proba_encoded,
    student_loss,
)
from leader_kedro.torch_threads import torch_threads

logger = logging.getLogger(__name__)

VARIANTS = {
    "main": {},
    "no_kd": {"kd": False},
    "no_align": {"align": False},
}


@dataclass(frozen=True)
class ProfileConfig:
    enabled: bool = True


@dataclass(frozen=True)
class KdConfig:
    enabled: bool = True
    alpha: float = 0.4


@dataclass(frozen=True)
class AlignConfig:
    enabled: bool = True
    beta: float = 0.005
    tau: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 16
    eval_batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    seed: int = 42
    num_threads: int | None = 1
    progress: bool = True


@dataclass(frozen=True)
class RegistryConfig:
    enabled: bool = True
    model_name: str = "leader-student"
    artifact_name: str = "leader_student"
    top_k: int = 10


@dataclass(frozen=True)
class DistillConfig:
    """``params:distill`` (conf/base/parameters_distill.yml documents every field)."""

    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    kd: KdConfig = field(default_factory=KdConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    threshold: float = 0.3
    ablations: bool = True
    check_features: bool = True
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def __post_init__(self):
        if self.align.tau <= 0:
            raise ParameterError(f"distill.align.tau must be > 0, got {self.align.tau}")
        if self.training.batch_size < 1 or self.training.max_epochs < 1:
            raise ParameterError(
                "distill.training.batch_size and distill.training.max_epochs must be >= 1, got "
                f"{self.training.batch_size} and {self.training.max_epochs}"
            )


def distill_config(params: Mapping | DistillConfig | None) -> DistillConfig:
    """The typed ``distill`` config from its parameter tree (built once, in the node)."""
    return build_config(DistillConfig, params, "distill")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def variant_config(cfg: DistillConfig, variant: str) -> DistillConfig:
    """``cfg`` with the ablation switches of ``variant`` turned off."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown student variant '{variant}'; expected one of {sorted(VARIANTS)}")
    for section, enabled in VARIANTS[variant].items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), enabled=enabled)})
    return cfg


def model_config(cfg: DistillConfig, vocab: dict, teacher_hidden_size: int | None) -> dict:
    """The saved model config (:func:`make_config`) of a student trained with ``cfg``."""
    overrides = {
        **as_dict(cfg.model),
        "kd_enabled": cfg.kd.enabled,
        "align_enabled": cfg.align.enabled,
        "profile_enabled": cfg.profile.enabled,
        "teacher_hidden_size": teacher_hidden_size if cfg.kd.enabled else None,
    }
    return make_config(vocab, overrides)


def evaluate_groups(
    samples: pd.DataFrame, probs: np.ndarray, vocab: dict, threshold: float
) -> dict:
    """PRAUC / Jaccard / F1 (and the rest of :func:`metrics.summary`) overall, single-, multi-visit."""
    if len(samples) != len(probs):
        raise ValueError(f"{len(samples)} samples but {len(probs)} prediction rows")
    y, _ = label_matrix(samples, vocab)
    masks = group_masks(samples)
    out: dict = {"n": {group: int(mask.sum()) for group, mask in masks.items()}}
    for group, mask in masks.items():
        out[group] = summary(y[mask], probs[mask], threshold) if mask.any() else None
    return out


def train_student(
    train_samples: pd.DataFrame,
    val_samples: pd.DataFrame,
    vocab: dict,
    params: DistillConfig | Mapping,
    teacher_features: dict | None = None,
    code_names: dict | None = None,
    variant: str = "main",
) -> tuple[StudentBundle, dict]:
    """Train one student (``params``: the distill config, ablation switches already applied).

    Returns the best-on-val :class:`StudentBundle` and a training history dict.
    """
    cfg = distill_config(params)
    if len(train_samples) == 0 or len(val_samples) == 0:
        raise ValueError(
            f"student training needs non-empty samples_train and samples_val "
            f"(got {len(train_samples)} and {len(val_samples)} rows)"
        )
    teacher_hidden = None
    if cfg.kd.enabled:
        if teacher_features is None:
            raise ValueError(
                f"distill.kd.enabled is true but no teacher_features were given; make them with "
                f"`{FEATURES_COMMAND}` or set distill.kd.enabled: false"
            )
        teacher_hidden = aligned_teacher_features(
            teacher_features, [str(s) for s in train_samples["sample_id"]]
        )
    model_cfg = model_config(
        cfg, vocab, int(teacher_hidden.shape[1]) if teacher_hidden is not None else None
    )
    enc_train = encode_samples(
        train_samples, vocab, model_cfg["max_visits"], model_cfg["max_codes"]
    )
    enc_val = encode_samples(val_samples, vocab, model_cfg["max_visits"], model_cfg["max_codes"])

    # the student's ops are tiny: one intra-op thread avoids sync overhead (10x on a busy CPU)
    with torch_threads(cfg.training.num_threads):
        return _fit(cfg, model_cfg, enc_train, enc_val, teacher_hidden, vocab, code_names, variant)


def _fit(
    cfg: DistillConfig, model_cfg, enc_train, enc_val, teacher_hidden, vocab, code_names, variant
):
    tr = cfg.training
    alpha = cfg.kd.alpha if cfg.kd.enabled else 0.0
    beta = cfg.align.beta if cfg.align.enabled else 0.0
    tau = cfg.align.tau
    y_val = enc_val.targets
    seed_everything(tr.seed)
    model = LeaderStudent(model_cfg)
    optim = torch.optim.Adam(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
    gen = torch.Generator().manual_seed(tr.seed)
    n = len(enc_train.sample_ids)

    from tqdm.auto import tqdm

    history: list[dict] = []
    best = {"epoch": -1, "val_prauc": -np.inf, "state": None}
    bad_epochs = 0
    started = time.perf_counter()
    bar = tqdm(range(1, tr.max_epochs + 1), desc=f"student[{variant}]", disable=not tr.progress)
    for epoch in bar:
        model.train()
        sums = {"total": 0.0, "bce": 0.0, "kd": 0.0, "align": 0.0}
        order = torch.randperm(n, generator=gen).tolist()
        steps = 0
        for s in range(0, n, tr.batch_size):
            batch = collate(enc_train, order[s : s + tr.batch_size], teacher_hidden)
            terms = student_loss(model, batch, alpha=alpha, beta=beta, tau=tau)
            optim.zero_grad()
            terms["total"].backward()
            optim.step()
            for k in sums:
                sums[k] += float(terms[k].detach())
            steps += 1
        probs = predict_proba_encoded(model, enc_val, tr.eval_batch_size)
        val_prauc = float(np.nanmean(average_precision_per_sample(y_val, probs)))
        val = summary(y_val, probs, cfg.threshold)
        row = {"epoch": epoch, **{f"train_{k}": v / steps for k, v in sums.items()}}
        row.update(
            {f"val_{k}": v for k, v in val.items() if k in ("prauc", "jaccard", "f1", "n_med")}
        )
        row["val_prauc"] = val_prauc
        history.append(row)
        tracking.log_metrics(
            {k: v for k, v in row.items() if k != "epoch"}, step=epoch, prefix=f"student.{variant}."
        )
        bar.set_postfix(loss=f"{row['train_total']:.4f}", val_prauc=f"{val_prauc:.4f}")
        if val_prauc > best["val_prauc"] or best["state"] is None:
            best = {
                "epoch": epoch,
                "val_prauc": val_prauc,
                "state": copy.deepcopy(model.state_dict()),
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= tr.patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    seconds = time.perf_counter() - started
    bundle = StudentBundle(model, model_cfg, vocab, code_names)
    info = {
        "variant": variant,
        "best_epoch": best["epoch"],
        "best_val_prauc": best["val_prauc"],
        "epochs_run": len(history),
        "train_seconds": round(seconds, 3),
        "n_parameters": bundle.n_parameters,
        "loss_weights": {"alpha": alpha, "beta": beta, "tau": tau},
        "config": model_cfg,
        "encoding_report": {"train": enc_train.report, "val": enc_val.report},
        "history": history,
    }
    logger.info(
        "student[%s]: best val PRAUC %.4f at epoch %d of %d (%.1fs, %d parameters)",
        variant,
        best["val_prauc"],
        best["epoch"],
        len(history),
        seconds,
        bundle.n_parameters,
    )
    return bundle, info


def compare_predictions(
    samples: pd.DataFrame,
    vocab: dict,
    predictions: dict[str, pd.DataFrame | None],
    threshold: float = 0.3,
) -> dict:
    """Metrics per model and patient group for prediction tables aligned to ``samples`` by sample_id.

    Empty or missing tables (a skipped ablation) give ``None`` for that model.
    """
    meds = list(vocab["medication"])
    out: dict = {"threshold": threshold, "test": {}, "groups": None}
    for name, frame in predictions.items():
        if frame is None or len(frame) == 0:
            out["test"][name] = None
            continue
        probs = prediction_matrix(frame, samples, meds, f"{name}_predictions_test")
        result = evaluate_groups(samples, probs, vocab, threshold)
        out["groups"] = result.pop("n")
        out["test"][name] = result
    return out
