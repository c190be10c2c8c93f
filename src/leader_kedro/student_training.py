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

import numpy as np
import pandas as pd
import torch

from leader_kedro import tracking
from leader_kedro.metrics import average_precision_per_sample, summary
from leader_kedro.student import (
    LeaderStudent,
    StudentBundle,
    collate,
    encode_samples,
    make_config,
    predict_proba_encoded,
    student_loss,
)
from leader_kedro.torch_threads import torch_threads

logger = logging.getLogger(__name__)

FEATURES_COMMAND = "kedro run --pipeline=features"

VARIANTS = {
    "main": {},
    "no_kd": {"kd": False},
    "no_align": {"align": False},
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def variant_params(params: dict, variant: str) -> dict:
    """The distill params with the ablation switches of ``variant`` turned off."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown student variant '{variant}'; expected one of {sorted(VARIANTS)}")
    out = copy.deepcopy(params)
    for section, enabled in VARIANTS[variant].items():
        out.setdefault(section, {})["enabled"] = enabled
    return out


def model_config_from_params(params: dict, vocab: dict, teacher_hidden_size: int | None) -> dict:
    """Map the ``distill`` parameter tree onto the model config of :func:`make_config`."""
    overrides = dict(params.get("model", {}))
    overrides["kd_enabled"] = bool(params.get("kd", {}).get("enabled", True))
    overrides["align_enabled"] = bool(params.get("align", {}).get("enabled", True))
    overrides["profile_enabled"] = bool(params.get("profile", {}).get("enabled", True))
    overrides["teacher_hidden_size"] = teacher_hidden_size if overrides["kd_enabled"] else None
    return make_config(vocab, overrides)


def align_teacher_features(teacher_features: dict, sample_ids: list[str]) -> torch.Tensor:
    """Rows of ``teacher_features["hidden"]`` in the order of ``sample_ids`` (float16 kept).

    Raises a ValueError naming the artifact and the refresh command when ids are missing.
    """
    for key in ("sample_ids", "hidden"):
        if key not in teacher_features:
            raise ValueError(
                f"teacher_features has no '{key}' entry (expected a dict with sample_ids, hidden, "
                f"fingerprint, metadata); rebuild it with `{FEATURES_COMMAND}`"
            )
    hidden = teacher_features["hidden"]
    if not isinstance(hidden, torch.Tensor):
        hidden = torch.as_tensor(np.asarray(hidden))
    if hidden.ndim != 2 or hidden.shape[0] != len(teacher_features["sample_ids"]):
        raise ValueError(
            f"teacher_features['hidden'] has shape {tuple(hidden.shape)}; expected "
            f"[{len(teacher_features['sample_ids'])}, H]; rebuild it with `{FEATURES_COMMAND}`"
        )
    position = {str(s): i for i, s in enumerate(teacher_features["sample_ids"])}
    missing = [s for s in sample_ids if s not in position]
    if missing:
        from leader_kedro.features import StaleFeaturesError

        raise StaleFeaturesError(
            f"teacher_features lacks {len(missing)} of {len(sample_ids)} train sample ids "
            f"(e.g. {missing[:3]}); the cached features are stale or from another split: "
            f"rebuild them with `{FEATURES_COMMAND}`"
        )
    return hidden[torch.as_tensor([position[s] for s in sample_ids], dtype=torch.long)]


def targets_matrix(samples: pd.DataFrame, vocab: dict) -> np.ndarray:
    index = {m: i for i, m in enumerate(vocab["medication"])}
    y = np.zeros((len(samples), len(index)), dtype=np.float32)
    for r, target in enumerate(samples["target"]):
        for m in target:
            if m in index:
                y[r, index[m]] = 1.0
    return y


def evaluate_groups(
    samples: pd.DataFrame, probs: np.ndarray, vocab: dict, threshold: float
) -> dict:
    """PRAUC / Jaccard / F1 (and the rest of :func:`metrics.summary`) overall, single-, multi-visit."""
    if len(samples) != len(probs):
        raise ValueError(f"{len(samples)} samples but {len(probs)} prediction rows")
    y = targets_matrix(samples, vocab)
    single = (
        (samples["n_past"].to_numpy() == 0)
        if "n_past" in samples
        else (samples["medications"].map(len).to_numpy() == 0)
    )
    out = {
        "n": {
            "overall": int(len(samples)),
            "single_visit": int(single.sum()),
            "multi_visit": int((~single).sum()),
        }
    }
    for group, mask in (
        ("overall", np.ones(len(samples), bool)),
        ("single_visit", single),
        ("multi_visit", ~single),
    ):
        out[group] = summary(y[mask], probs[mask], threshold) if mask.any() else None
    return out


def train_student(
    train_samples: pd.DataFrame,
    val_samples: pd.DataFrame,
    vocab: dict,
    params: dict,
    teacher_features: dict | None = None,
    code_names: dict | None = None,
    variant: str = "main",
) -> tuple[StudentBundle, dict]:
    """Train one student (``params`` = the ``distill`` tree, ablation switches already applied).

    Returns the best-on-val :class:`StudentBundle` and a training history dict.
    """
    if len(train_samples) == 0 or len(val_samples) == 0:
        raise ValueError(
            f"student training needs non-empty samples_train and samples_val "
            f"(got {len(train_samples)} and {len(val_samples)} rows)"
        )
    tr = dict(params.get("training", {}))
    seed = int(tr.get("seed", 42))
    kd_on = bool(params.get("kd", {}).get("enabled", True))
    alpha = float(params.get("kd", {}).get("alpha", 0.4)) if kd_on else 0.0
    align_on = bool(params.get("align", {}).get("enabled", True))
    beta = float(params.get("align", {}).get("beta", 0.005)) if align_on else 0.0
    tau = float(params.get("align", {}).get("tau", 0.1))
    if tau <= 0:
        raise ValueError(f"distill.align.tau must be > 0, got {tau}")
    teacher_hidden = None
    if kd_on:
        if teacher_features is None:
            raise ValueError(
                f"distill.kd.enabled is true but no teacher_features were given; make them with "
                f"`{FEATURES_COMMAND}` or set distill.kd.enabled: false"
            )
        teacher_hidden = align_teacher_features(
            teacher_features, [str(s) for s in train_samples["sample_id"]]
        )
    cfg = model_config_from_params(
        params, vocab, int(teacher_hidden.shape[1]) if teacher_hidden is not None else None
    )
    enc_train = encode_samples(train_samples, vocab, cfg["max_visits"], cfg["max_codes"])
    enc_val = encode_samples(val_samples, vocab, cfg["max_visits"], cfg["max_codes"])

    # the student's ops are tiny: one intra-op thread avoids sync overhead (10x on a busy CPU)
    with torch_threads(tr.get("num_threads", 1)):
        return _fit(
            cfg,
            enc_train,
            enc_val,
            teacher_hidden,
            tr,
            params,
            seed,
            alpha,
            beta,
            tau,
            vocab,
            code_names,
            variant,
        )


def _fit(
    cfg,
    enc_train,
    enc_val,
    teacher_hidden,
    tr,
    params,
    seed,
    alpha,
    beta,
    tau,
    vocab,
    code_names,
    variant,
):
    y_val = enc_val.targets
    seed_everything(seed)
    model = LeaderStudent(cfg)
    optim = torch.optim.Adam(
        model.parameters(),
        lr=float(tr.get("lr", 5e-4)),
        weight_decay=float(tr.get("weight_decay", 0.0)),
    )
    gen = torch.Generator().manual_seed(seed)
    batch_size = int(tr.get("batch_size", 16))
    eval_bs = int(tr.get("eval_batch_size", 256))
    max_epochs, patience = int(tr.get("max_epochs", 100)), int(tr.get("patience", 10))
    threshold = float(params.get("threshold", 0.3))
    n = len(enc_train.sample_ids)

    from tqdm.auto import tqdm

    history: list[dict] = []
    best = {"epoch": -1, "val_prauc": -np.inf, "state": None}
    bad_epochs = 0
    started = time.perf_counter()
    bar = tqdm(
        range(1, max_epochs + 1), desc=f"student[{variant}]", disable=not tr.get("progress", True)
    )
    for epoch in bar:
        model.train()
        sums = {"total": 0.0, "bce": 0.0, "kd": 0.0, "align": 0.0}
        order = torch.randperm(n, generator=gen).tolist()
        steps = 0
        for s in range(0, n, batch_size):
            batch = collate(enc_train, order[s : s + batch_size], teacher_hidden)
            terms = student_loss(model, batch, alpha=alpha, beta=beta, tau=tau)
            optim.zero_grad()
            terms["total"].backward()
            optim.step()
            for k in sums:
                sums[k] += float(terms[k].detach())
            steps += 1
        probs = predict_proba_encoded(model, enc_val, eval_bs)
        val_prauc = float(np.nanmean(average_precision_per_sample(y_val, probs)))
        val = summary(y_val, probs, threshold)
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
            if bad_epochs >= patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    seconds = time.perf_counter() - started
    bundle = StudentBundle(model, cfg, vocab, code_names)
    info = {
        "variant": variant,
        "best_epoch": best["epoch"],
        "best_val_prauc": best["val_prauc"],
        "epochs_run": len(history),
        "train_seconds": round(seconds, 3),
        "n_parameters": bundle.n_parameters,
        "loss_weights": {"alpha": alpha, "beta": beta, "tau": tau},
        "config": cfg,
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
        missing_cols = [c for c in ["sample_id", *meds] if c not in frame.columns]
        if missing_cols:
            raise ValueError(
                f"{name} predictions lack column(s) {missing_cols[:5]}; expected sample_id plus one "
                "column per medication in vocab['medication'] order (docs/contracts.md)"
            )
        by_id = frame.set_index(frame["sample_id"].astype(str))
        ids = samples["sample_id"].astype(str)
        absent = [s for s in ids if s not in by_id.index]
        if absent:
            raise ValueError(
                f"{name} predictions have no row for {len(absent)} of {len(ids)} test samples (e.g. {absent[:3]})"
            )
        probs = by_id.loc[ids, meds].to_numpy(dtype=np.float64)
        result = evaluate_groups(samples, probs, vocab, threshold)
        out["groups"] = result.pop("n")
        out["test"][name] = result
    return out
