"""How much of the headroom is data: the logistic regression refitted on growing shares of train.

The multi-hot logistic regression (``baselines.LogRegBaseline``, the evaluate stage's settings) is
fitted on nested, seeded shares of the train *patients* (10%, 25%, 50%, 100% by default; the 100%
fit is the ``baseline_logreg`` of the comparison). Each fit gets its threshold tuned on val and is
scored on the whole test split: PRAUC (mean per-sample average precision, threshold-free) and
Jaccard at the tuned threshold, overall and in the history and rare-code groups. Beside it, the same
scores of the oracle (the synthetic generator's true probabilities) when the source has one.

Read together: what the curve still gains from 50% to 100% is headroom that more data would close;
what is left between its end and the oracle is what data of this size does not give a linear model
over code ids (history, interactions, the meaning of rare names), the room for knowledge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.contracts import diagnosis_counts, group_masks, label_matrix, prediction_matrix
from leader_kedro.evaluation import metrics as M
from leader_kedro.evaluation.protocols import EvaluateConfig, threshold_grid, tune_threshold

#: the groups scored at each point of the curve
CURVE_GROUPS = ("overall", "single_visit", "multi_visit", "rare_dx", "common_dx")


def train_subsets(
    samples_train: pd.DataFrame, fractions: Sequence[float], seed: int
) -> dict[float, pd.DataFrame]:
    """Nested subsets of the train samples by patient: one seeded shuffle of the patients, then the
    first ``ceil(fraction * n)`` of them (at least one) for each fraction."""
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise ValueError(f"evaluate.learning_curve.fractions must lie in (0, 1], got {f}")
    patients = np.sort(samples_train["subject_id"].unique())
    order = np.random.default_rng(seed).permutation(patients)
    out = {}
    for f in sorted(float(x) for x in fractions):
        n = max(1, int(np.ceil(f * len(order))))
        keep = samples_train["subject_id"].isin(order[:n]).to_numpy()
        out[f] = samples_train[keep].reset_index(drop=True)
    return out


def scores(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    masks: Mapping[str, np.ndarray],
    grid: Sequence[float],
    objective: str = "jaccard",
) -> dict[str, Any]:
    """The val-tuned threshold, then PRAUC and Jaccard on test per group."""
    threshold = tune_threshold(y_val, p_val, grid, objective)["threshold"]
    ap = M.average_precision_per_sample(y_test, p_test)
    jaccard = M.set_metrics_per_sample(y_test, p_test > threshold)["jaccard"]
    out: dict[str, Any] = {"threshold": float(threshold)}
    for group in CURVE_GROUPS:
        mask = masks.get(group)
        if mask is None or not mask.any():
            continue
        out[group] = {
            "prauc": float(np.nanmean(ap[mask])),
            "jaccard": float(jaccard[mask].mean()),
            "samples": int(mask.sum()),
        }
    return out


def learning_curve(
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: Mapping,
    cfg: EvaluateConfig,
    oracle: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """The curve (one row per fraction) and, when given, the oracle's scores on the same split."""
    from leader_kedro.evaluation.baselines import LogRegBaseline

    meds = list(vocab["medication"])
    y_val, _ = label_matrix(samples_val, vocab, "samples_val", dtype=np.int8)
    y_test, _ = label_matrix(samples_test, vocab, "samples_test", dtype=np.int8)
    counts = diagnosis_counts(samples_train)  # the strata of the whole train split, at every point
    masks = group_masks(samples_test, counts, cfg.rare_code_max_count)
    grid = threshold_grid(cfg.threshold_tuning.grid)
    objective = cfg.threshold_tuning.objective
    lr = cfg.logreg
    rows = []
    for fraction, subset in train_subsets(
        samples_train, cfg.learning_curve.fractions, cfg.seed
    ).items():
        model = LogRegBaseline(
            c=lr.C, max_iter=lr.max_iter, seed=cfg.seed, class_weight=lr.class_weight
        ).fit(subset, vocab)
        p_val = model.predict_proba(samples_val, vocab)
        p_test = model.predict_proba(samples_test, vocab)
        rows.append(
            {
                "fraction": fraction,
                "train_samples": int(len(subset)),
                "train_patients": int(subset["subject_id"].nunique()),
                **scores(y_val, p_val, y_test, p_test, masks, grid, objective),
            }
        )
    out: dict[str, Any] = {
        "model": "baseline_logreg",
        "definition": "multi-hot logistic regression refitted on nested seeded shares of the train "
        "patients; threshold tuned on val; test PRAUC (per-sample average precision) and Jaccard",
        "rare_code_max_count": cfg.rare_code_max_count,
        "groups": {g: int(m.sum()) for g, m in masks.items()},
        "curve": rows,
        "oracle": None,
    }
    if oracle is not None and len(oracle[1]):
        o_val = prediction_matrix(oracle[0], samples_val, meds, "oracle_predictions_val")
        o_test = prediction_matrix(oracle[1], samples_test, meds, "oracle_predictions_test")
        out["oracle"] = scores(y_val, o_val, y_test, o_test, masks, grid, objective)
    return out
