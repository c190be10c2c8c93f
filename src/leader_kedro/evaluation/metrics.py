"""Medication-recommendation metrics: the one tested home for Jaccard/PRAUC/F1/DDI/#MED.

All per-sample metrics follow the LEADER/SafeDrug definitions: compute per target visit, then
average. Inputs are dense arrays: ``y_true`` (N x M, 0/1), ``y_prob`` (N x M, probabilities),
columns in ``vocab["medication"]`` order.
"""

from __future__ import annotations

import numpy as np


def average_precision_per_sample(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Per-row average precision (sklearn ``average_precision_score`` semantics, ties grouped).

    Rows without a positive label get NaN (sklearn warns and returns 0 there; we leave the
    choice of how to aggregate to the caller).
    """
    y_true = np.asarray(y_true, dtype=bool)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    out = np.full(len(y_true), np.nan)
    for i in range(len(y_true)):
        t, p = y_true[i], y_prob[i]
        n_pos = t.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-p, kind="mergesort")
        p_sorted, t_sorted = p[order], t[order]
        # group ties: precision/recall are only evaluated at distinct score thresholds
        distinct = np.r_[np.nonzero(np.diff(p_sorted))[0], len(p_sorted) - 1]
        tp = np.cumsum(t_sorted)[distinct]
        fp = (distinct + 1) - tp
        precision = tp / (tp + fp)
        recall = tp / n_pos
        out[i] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def set_metrics_per_sample(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Jaccard, precision, recall, F1 and set size per sample for 0/1 predictions."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    inter = (y_true & y_pred).sum(1).astype(float)
    union = (y_true | y_pred).sum(1).astype(float)
    n_pred = y_pred.sum(1).astype(float)
    n_true = y_true.sum(1).astype(float)
    jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    precision = np.divide(inter, n_pred, out=np.zeros_like(inter), where=n_pred > 0)
    recall = np.divide(inter, n_true, out=np.zeros_like(inter), where=n_true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(inter), where=denom > 0)
    return {"jaccard": jaccard, "precision": precision, "recall": recall, "f1": f1, "n_med": n_pred}


def ddi_pairs_per_sample(y_pred: np.ndarray, ddi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#interacting pairs, #pairs) among the predicted medications of each sample."""
    y = np.asarray(y_pred, dtype=np.float64)
    adj = np.triu(np.asarray(ddi, dtype=np.float64), k=1)
    adj = np.maximum(adj, np.triu(np.asarray(ddi, dtype=np.float64).T, k=1))
    interacting = np.einsum("ni,ij,nj->n", y, adj, y)
    k = y.sum(1)
    return interacting, k * (k - 1) / 2


def ddi_rate(y_pred: np.ndarray, ddi: np.ndarray) -> float:
    """Pooled DDI rate: interacting predicted pairs over all predicted pairs (LEADER/SafeDrug)."""
    interacting, pairs = ddi_pairs_per_sample(y_pred, ddi)
    total = pairs.sum()
    return float(interacting.sum() / total) if total > 0 else 0.0


def summary(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, ddi: np.ndarray | None = None
) -> dict[str, float]:
    """Mean per-sample metrics at one threshold (strictly greater than, as LEADER)."""
    y_pred = np.asarray(y_prob) > threshold
    per = set_metrics_per_sample(y_true, y_pred)
    out = {name: float(np.mean(values)) for name, values in per.items()}
    out["prauc"] = float(np.nanmean(average_precision_per_sample(y_true, y_prob)))
    if ddi is not None:
        out["ddi_rate"] = ddi_rate(y_pred, ddi)
    return out


# ---------------------------------------------------------------------------------------------
# Extensions (engineer "evaluate"): per-visit DDI, ground truth DDI, label matrices.
# ---------------------------------------------------------------------------------------------


def ddi_rate_per_visit(y_pred: np.ndarray, ddi: np.ndarray) -> float:
    """Per-visit DDI rate: the mean over samples of (interacting pairs / predicted pairs).

    Samples with fewer than two predicted medications have no pair and are left out of the
    mean (their rate is undefined); 0.0 when no sample has a pair.
    """
    interacting, pairs = ddi_pairs_per_sample(y_pred, ddi)
    has_pair = pairs > 0
    if not has_pair.any():
        return 0.0
    return float(np.mean(interacting[has_pair] / pairs[has_pair]))


def ground_truth_ddi_rate(y_true: np.ndarray, ddi: np.ndarray) -> dict[str, float]:
    """DDI rate of the prescribed (label) sets: pooled and per-visit mean."""
    return {"pooled": ddi_rate(y_true, ddi), "per_visit": ddi_rate_per_visit(y_true, ddi)}


def mean_n_med(y_pred: np.ndarray) -> float:
    """#MED: the mean predicted set size."""
    return float(np.asarray(y_pred, dtype=bool).sum(1).mean()) if len(y_pred) else 0.0


def metrics_at_threshold(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float,
    ddi: np.ndarray | None = None,
) -> dict[str, float]:
    """Everything at once: ``summary`` plus per-visit DDI and #MED under its own name."""
    out = summary(y_true, y_prob, threshold, ddi)
    y_pred = np.asarray(y_prob) > threshold
    if ddi is not None:
        out["ddi_rate_per_visit"] = ddi_rate_per_visit(y_pred, ddi)
    return out
