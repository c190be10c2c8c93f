"""Evaluation protocols, resampling rounds, groups, threshold tuning and DDI post-processing.

Plain numpy/pandas, importable without Kedro. Metric definitions live in ``metrics.py``; this
module decides *which* samples, *which* threshold and *how* to average:

- **LEADER** protocol: threshold 0.3 (strict ``>``), per-visit mean, 10 rounds on a random 80%
  of the samples drawn *without* replacement; DDI is not part of the rounds (reported once on
  the whole split, as LEADER prints it).
- **SafeDrug** protocol: threshold 0.5, per-patient mean (visits of a patient averaged first),
  10 rounds of an 80% bootstrap *with* replacement over patients, pooled DDI and #MED included.
- **tuned**: the threshold that maximises the val Jaccard (or F1) of each model, then the
  LEADER resampling.

Every round uses the same indices for every model (same seed), so rounds are paired.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.config import as_dict, build_config
from leader_kedro.contracts import (
    GROUPS,
    MODELS,
    RARE_GROUPS,
    RARE_MAX_COUNT,
    ParameterError,
    diagnosis_counts,
    group_masks,
    label_matrix,
    prediction_matrix,
)
from leader_kedro.evaluation import metrics as M
from leader_kedro.evaluation.paired import PairedConfig

logger = logging.getLogger(__name__)

ROUND_METRICS = ("jaccard", "prauc", "f1", "precision", "recall", "n_med")
DDI_METRICS = ("ddi_rate", "ddi_rate_per_visit")


@dataclass(frozen=True)
class ProtocolConfig:
    """One evaluation protocol: threshold (a number, or ``tuned`` on val), resampling, averaging."""

    label: str = ""
    threshold: float | str = 0.3
    rounds: int = 10
    fraction: float = 0.8
    replace: bool = False
    average: str = "visit"
    ddi_in_rounds: bool = False

    def __post_init__(self):
        if isinstance(self.threshold, str) and self.threshold != "tuned":
            raise ParameterError(
                f"evaluate protocol 'threshold' must be a number or 'tuned', got {self.threshold!r}"
            )


DEFAULT_PROTOCOLS: dict[str, ProtocolConfig] = {
    "leader": ProtocolConfig(
        label="LEADER: threshold 0.3 (strict >), per-visit mean, 10 rounds x 80% without "
        "replacement; DDI once on the whole split",
        threshold=0.3,
    ),
    "safedrug": ProtocolConfig(
        label="SafeDrug: threshold 0.5, per-patient mean, 10 rounds x 80% bootstrap with "
        "replacement (over patients), DDI included",
        threshold=0.5,
        replace=True,
        average="patient",
        ddi_in_rounds=True,
    ),
    "tuned": ProtocolConfig(
        label="Tuned: per-model threshold maximising val Jaccard, per-visit mean, 10 rounds x 80% "
        "without replacement, DDI included",
        threshold="tuned",
        ddi_in_rounds=True,
    ),
}


@dataclass(frozen=True)
class GridConfig:
    start: float = 0.05
    stop: float = 0.95
    step: float = 0.01


@dataclass(frozen=True)
class ThresholdTuningConfig:
    objective: str = "jaccard"
    grid: GridConfig = field(default_factory=GridConfig)


@dataclass(frozen=True)
class DdiPostprocessConfig:
    enabled: bool = True
    protocol: str = "tuned"
    models: tuple[str, ...] = ("teacher", "student", "baseline_logreg")
    targets: tuple[float, ...] = (0.08, 0.06, 0.04, 0.02, 0.01, 0.0)


@dataclass(frozen=True)
class LogregConfig:
    C: float = 1.0
    max_iter: int = 200
    class_weight: str | None = None


@dataclass(frozen=True)
class EfficiencyConfig:
    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 32)
    latency_samples: int = 64
    throughput_samples: int = 256
    warmup: int = 3
    num_threads: int | None = None
    teacher_threads: int | None = None
    student_threads: int | None = 1


@dataclass(frozen=True)
class ReportConfig:
    plot_protocol: str = "leader"
    gpu_results: str | None = None
    targets: dict[str, Any] = field(default_factory=lambda: {"cpu_throughput_ratio": 20})
    model_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LearningCurveConfig:
    """The multi-hot logistic regression refitted on nested, seeded shares of the train patients."""

    enabled: bool = True
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class EvaluateConfig:
    """``params:evaluate`` (conf/base/parameters_evaluate.yml documents every field)."""

    seed: int = 42
    models: tuple[str, ...] = MODELS
    ci: float = 0.95
    rare_code_max_count: int = RARE_MAX_COUNT
    protocols: dict[str, ProtocolConfig] = field(default_factory=lambda: dict(DEFAULT_PROTOCOLS))
    threshold_tuning: ThresholdTuningConfig = field(default_factory=ThresholdTuningConfig)
    ddi_postprocess: DdiPostprocessConfig = field(default_factory=DdiPostprocessConfig)
    logreg: LogregConfig = field(default_factory=LogregConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    learning_curve: LearningCurveConfig = field(default_factory=LearningCurveConfig)
    paired: PairedConfig = field(default_factory=PairedConfig)


def evaluate_config(params: Mapping | EvaluateConfig | None) -> EvaluateConfig:
    if isinstance(params, EvaluateConfig):
        return params
    return build_config(EvaluateConfig, params, "evaluate")


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------


def group_sizes(
    samples: pd.DataFrame,
    train_counts: Mapping[str, int] | None = None,
    max_count: int = RARE_MAX_COUNT,
) -> dict[str, dict[str, int]]:
    """Samples and patients of each group (with ``train_counts``, the rare-code strata too)."""
    out = {}
    for group, mask in group_masks(samples, train_counts, max_count).items():
        out[group] = {
            "samples": int(mask.sum()),
            "patients": int(samples.loc[mask, "subject_id"].nunique()),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Resampling rounds and aggregation
# ---------------------------------------------------------------------------------------------


def round_indices(
    n_units: int, rounds: int, fraction: float, replace: bool, seed: int
) -> list[np.ndarray]:
    """Unit indices of each round: ``round(fraction * n)`` draws, seeded, with/without replacement."""
    if not 0 < fraction <= 1:
        raise ValueError(f"evaluate protocol 'fraction' must be in (0, 1], got {fraction}")
    if rounds < 1:
        raise ValueError(f"evaluate protocol 'rounds' must be >= 1, got {rounds}")
    rng = np.random.default_rng(seed)
    size = max(1, int(round(fraction * n_units))) if n_units else 0
    return [rng.choice(n_units, size=size, replace=replace) for _ in range(rounds)]


def per_sample_table(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float, ddi: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per-sample metric arrays at one threshold (strict ``>``), plus DDI pair counts."""
    y_pred = np.asarray(y_prob) > threshold
    table = M.set_metrics_per_sample(y_true, y_pred)
    table["prauc"] = M.average_precision_per_sample(y_true, y_prob)
    if ddi is not None:
        table["ddi_interacting"], table["ddi_pairs"] = M.ddi_pairs_per_sample(y_pred, ddi)
    return table


def _unit_table(table: dict[str, np.ndarray], units: np.ndarray | None) -> dict[str, np.ndarray]:
    """Collapse per-sample arrays to per-unit arrays (per patient when ``units`` is given)."""
    out = {}
    pairs = table.get("ddi_pairs")
    if pairs is not None:
        has = pairs > 0
        rate = np.divide(table["ddi_interacting"], pairs, out=np.zeros_like(pairs), where=has)
    if units is None:
        out = {k: table[k] for k in ROUND_METRICS}
        if pairs is not None:
            out["ddi_interacting"], out["ddi_pairs"] = table["ddi_interacting"], pairs
            out["ddi_rate_sum"], out["ddi_rate_count"] = rate, has.astype(float)
        return out
    frame = pd.DataFrame({k: table[k] for k in ROUND_METRICS})
    frame["unit"] = units
    grouped = frame.groupby("unit", sort=True)
    means = grouped.mean()  # NaN-skipping (prauc of rows without labels)
    out = {k: means[k].to_numpy() for k in ROUND_METRICS}
    if pairs is not None:
        extra = (
            pd.DataFrame(
                {
                    "unit": units,
                    "i": table["ddi_interacting"],
                    "p": pairs,
                    "r": rate,
                    "c": has.astype(float),
                }
            )
            .groupby("unit", sort=True)
            .sum()
        )
        out["ddi_interacting"], out["ddi_pairs"] = extra["i"].to_numpy(), extra["p"].to_numpy()
        out["ddi_rate_sum"], out["ddi_rate_count"] = extra["r"].to_numpy(), extra["c"].to_numpy()
    return out


def _aggregate(
    unit: dict[str, np.ndarray], idx: np.ndarray | None, with_ddi: bool
) -> dict[str, float]:
    sel = (lambda a: a) if idx is None else (lambda a: a[idx])
    out = {}
    for k in ROUND_METRICS:
        values = sel(unit[k])
        values = values[~np.isnan(values)]
        out[k] = float(values.mean()) if len(values) else float("nan")
    if with_ddi and "ddi_pairs" in unit:
        pairs = sel(unit["ddi_pairs"]).sum()
        out["ddi_rate"] = float(sel(unit["ddi_interacting"]).sum() / pairs) if pairs > 0 else 0.0
        count = sel(unit["ddi_rate_count"]).sum()
        out["ddi_rate_per_visit"] = (
            float(sel(unit["ddi_rate_sum"]).sum() / count) if count > 0 else 0.0
        )
    return out


def summarise_rounds(values: Sequence[float], ci: float = 0.95) -> dict[str, float]:
    """Mean, std (ddof=0, as numpy/SafeDrug) and the percentile interval of the round values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {
            "mean": float("nan"),
            "std": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "rounds": 0,
        }
    lo, hi = np.percentile(v, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "rounds": int(len(v)),
    }


def evaluate_protocol(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    subject_ids: np.ndarray,
    protocol: ProtocolConfig | Mapping[str, Any],
    threshold: float,
    ddi: np.ndarray | None,
    seed: int,
    ci: float = 0.95,
) -> dict[str, Any]:
    """One model, one group, one protocol: the point estimate on all samples and the rounds."""
    if not isinstance(protocol, ProtocolConfig):
        protocol = build_config(ProtocolConfig, protocol, "evaluate.protocols.<protocol>")
    table = per_sample_table(y_true, y_prob, threshold, ddi)
    average = protocol.average
    if average not in ("visit", "patient"):
        raise ValueError(
            f"evaluate protocol 'average' must be 'visit' or 'patient', got {average!r}"
        )
    units = np.asarray(subject_ids) if average == "patient" else None
    unit = _unit_table(table, units)
    n_units = len(unit["jaccard"])
    with_ddi = ddi is not None
    point = _aggregate(unit, None, with_ddi)
    in_rounds = with_ddi and protocol.ddi_in_rounds
    idx_rounds = round_indices(n_units, protocol.rounds, protocol.fraction, protocol.replace, seed)
    per_round = [_aggregate(unit, idx, in_rounds) for idx in idx_rounds] if n_units else []
    names = list(ROUND_METRICS) + (list(DDI_METRICS) if in_rounds else [])
    rounds = {k: summarise_rounds([r[k] for r in per_round], ci) for k in names}
    return {
        "threshold": float(threshold),
        "samples": int(len(y_true)),
        "units": int(n_units),
        "point": point,
        "rounds": rounds,
    }


# ---------------------------------------------------------------------------------------------
# Threshold tuning on val
# ---------------------------------------------------------------------------------------------


def tune_threshold(
    y_true: np.ndarray, y_prob: np.ndarray, grid: Sequence[float], objective: str = "jaccard"
) -> dict[str, Any]:
    """The grid threshold maximising the mean per-sample ``objective`` (jaccard or f1) on val.

    Ties go to the smallest threshold. Returns the threshold, its score and the whole curve.
    """
    if objective not in ("jaccard", "f1"):
        raise ValueError(
            f"evaluate.threshold_tuning.objective must be 'jaccard' or 'f1', got {objective!r}"
        )
    grid = [float(t) for t in grid]
    if not grid:
        raise ValueError("evaluate.threshold_tuning grid is empty")
    scores = [float(M.set_metrics_per_sample(y_true, y_prob > t)[objective].mean()) for t in grid]
    best = int(np.argmax(scores))
    return {
        "threshold": grid[best],
        "score": scores[best],
        "objective": objective,
        "grid": grid,
        "curve": scores,
    }


def threshold_grid(spec: GridConfig | Mapping[str, float]) -> list[float]:
    if not isinstance(spec, GridConfig):
        spec = build_config(GridConfig, spec, "evaluate.threshold_tuning.grid")
    start, stop, step = spec.start, spec.stop, spec.step
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 6) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# DDI-aware post-processing
# ---------------------------------------------------------------------------------------------


def _lowest_interacting_member(pred: np.ndarray, prob: np.ndarray, adj: np.ndarray) -> int:
    """Index of the lowest-probability drug among the lower members of interacting pairs; -1 if none."""
    on = np.flatnonzero(pred)
    if len(on) < 2:
        return -1
    sub = adj[np.ix_(on, on)]
    a, b = np.nonzero(np.triu(sub, k=1))
    if len(a) == 0:
        return -1
    pa, pb = prob[on[a]], prob[on[b]]
    lower = np.where(pa <= pb, on[a], on[b])
    return int(lower[np.argmin(prob[lower])])


def ddi_postprocess_path(
    y_prob: np.ndarray, threshold: float, ddi: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Greedy DDI-aware removal, the whole path.

    Start from the thresholded sets; at each step, among all samples, take the interacting pairs
    of predicted drugs and drop the lower-probability member with the smallest probability
    overall. Stop when no predicted pair interacts. Drugs are only ever removed, never added.
    Returns the starting prediction and the ordered removals ``(sample, drug)``.
    """
    prob = np.asarray(y_prob, dtype=np.float64)
    pred = prob > threshold
    adj = np.asarray(ddi, dtype=bool)
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    work = pred.copy()
    heap: list[tuple[float, int, int]] = []
    for i in range(len(work)):
        j = _lowest_interacting_member(work[i], prob[i], adj)
        if j >= 0:
            heap.append((prob[i, j], i, j))
    heapq.heapify(heap)
    removals: list[tuple[int, int]] = []
    while heap:
        _, i, j = heapq.heappop(heap)
        work[i, j] = False
        removals.append((i, j))
        nxt = _lowest_interacting_member(work[i], prob[i], adj)
        if nxt >= 0:
            heapq.heappush(heap, (prob[i, nxt], i, nxt))
    return pred, removals


def ddi_postprocess(
    y_prob: np.ndarray, threshold: float, ddi: np.ndarray, target_rate: float
) -> np.ndarray:
    """Thresholded predictions with the greedy removals applied until pooled DDI <= target."""
    return ddi_tradeoff(y_prob, None, threshold, ddi, [target_rate], return_predictions=True)[0]


def ddi_tradeoff(
    y_prob: np.ndarray,
    y_true: np.ndarray | None,
    threshold: float,
    ddi: np.ndarray,
    targets: Sequence[float],
    return_predictions: bool = False,
) -> list:
    """Walk the greedy path and record, for each target pooled DDI rate, the first state at or
    below it: the pooled and per-visit DDI, #MED, removals and (with ``y_true``) Jaccard/F1/
    precision/recall and two PRAUCs:

    - ``prauc``: of the unchanged probabilities (a ranking metric; removal does not change it);
    - ``prauc_masked``: with the probabilities of removed drugs set to 0, i.e. what a user sees
      when removed drugs are ranked last.
    """
    prob = np.asarray(y_prob, dtype=np.float64)
    pred, removals = ddi_postprocess_path(prob, threshold, ddi)
    interacting, pairs = M.ddi_pairs_per_sample(pred, ddi)
    adj = np.asarray(ddi, dtype=bool)
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    total_i, total_p = float(interacting.sum()), float(pairs.sum())

    def rate(ti: float, tp: float) -> float:
        return ti / tp if tp > 0 else 0.0

    order = sorted(range(len(targets)), key=lambda k: -float(targets[k]))
    states: dict[int, np.ndarray] = {}
    n_removed: dict[int, int] = {}
    work = pred.copy()
    step = 0
    for k in order:
        target = float(targets[k])
        if target < 0:
            raise ValueError(f"evaluate.ddi_postprocess.targets must be >= 0, got {target}")
        while rate(total_i, total_p) > target and step < len(removals):
            i, j = removals[step]
            others = work[i].copy()
            others[j] = False
            total_i -= float(adj[j, others].sum())
            total_p -= float(others.sum())
            work[i, j] = False
            step += 1
        states[k] = work.copy()
        n_removed[k] = step
    if return_predictions:
        return [states[k] for k in range(len(targets))]
    prauc_raw = (
        float(np.nanmean(M.average_precision_per_sample(y_true, prob)))
        if y_true is not None
        else None
    )
    rows = []
    for k in range(len(targets)):
        state = states[k]
        row: dict[str, Any] = {
            "target": float(targets[k]),
            "removed": int(n_removed[k]),
            "ddi_rate": M.ddi_rate(state, ddi),
            "ddi_rate_per_visit": M.ddi_rate_per_visit(state, ddi),
            "n_med": M.mean_n_med(state),
        }
        if y_true is not None:
            per = M.set_metrics_per_sample(y_true, state)
            row.update({m: float(per[m].mean()) for m in ("jaccard", "f1", "precision", "recall")})
            masked = np.where(pred & ~state, 0.0, prob)
            row["prauc"] = prauc_raw
            row["prauc_masked"] = float(np.nanmean(M.average_precision_per_sample(y_true, masked)))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The whole comparison
# ---------------------------------------------------------------------------------------------


def evaluate_models(
    predictions: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: Mapping,
    ddi_adjacency: pd.DataFrame | None,
    cfg: EvaluateConfig | Mapping | None = None,
    samples_train: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Evaluate every model (``{name: (val_predictions, test_predictions)}``) on the same test split.

    ``cfg`` supplies the protocols, threshold tuning, DDI post-processing, seed and interval.
    With ``samples_train`` the test samples are also grouped by whether the current visit holds a
    diagnosis seen at most ``cfg.rare_code_max_count`` times in train (``rare_dx`` / ``common_dx``).
    Returns the metrics document (JSON-serialisable) described in docs/evaluate.md.
    """
    cfg = evaluate_config(cfg)
    protocols, tuning, postprocess = cfg.protocols, cfg.threshold_tuning, cfg.ddi_postprocess
    seed, ci = cfg.seed, cfg.ci
    meds = list(vocab["medication"])
    ddi = _ddi_matrix(ddi_adjacency, meds)
    y_val, unknown_val = label_matrix(samples_val, vocab, "samples_val", dtype=np.int8)
    y_test, unknown_test = label_matrix(samples_test, vocab, "samples_test", dtype=np.int8)
    subjects = samples_test["subject_id"].to_numpy()
    counts = diagnosis_counts(samples_train) if samples_train is not None else None
    masks = group_masks(samples_test, counts, cfg.rare_code_max_count)
    grid = threshold_grid(tuning.grid)

    doc: dict[str, Any] = {
        "split": "test",
        "protocols": {name: as_dict(p) for name, p in protocols.items()},
        "ci": ci,
        "seed": seed,
        "n_medications": len(meds),
        "groups": group_sizes(samples_test, counts, cfg.rare_code_max_count),
        "ground_truth_ddi": M.ground_truth_ddi_rate(y_test, ddi) if ddi is not None else None,
        "ground_truth_n_med": M.mean_n_med(y_test),
        "thresholds": {},
        "models": {},
        "postprocess": {},
    }
    if counts is not None:
        doc["rare_code_max_count"] = cfg.rare_code_max_count
    if unknown_val or unknown_test:
        doc["unknown_label_codes_dropped"] = {"val": unknown_val, "test": unknown_test}
    for model, (pred_val, pred_test) in predictions.items():
        p_val = prediction_matrix(pred_val, samples_val, meds, f"{model}_predictions_val")
        p_test = prediction_matrix(pred_test, samples_test, meds, f"{model}_predictions_test")
        tuned = tune_threshold(y_val, p_val, grid, tuning.objective)
        doc["thresholds"][model] = {k: tuned[k] for k in ("threshold", "score", "objective")}
        per_protocol = {}
        for k, (pname, proto) in enumerate(protocols.items()):
            thr = tuned["threshold"] if proto.threshold == "tuned" else float(proto.threshold)
            per_group: dict[str, Any] = {}
            for group, mask in masks.items():
                if not mask.any():
                    per_group[group] = {
                        "threshold": thr,
                        "samples": 0,
                        "units": 0,
                        "point": {},
                        "rounds": {},
                    }
                    continue
                per_group[group] = evaluate_protocol(
                    y_test[mask], p_test[mask], subjects[mask], proto, thr, ddi, seed + k, ci
                )
            per_protocol[pname] = per_group
        doc["models"][model] = per_protocol
        if postprocess.enabled and ddi is not None and model in postprocess.models:
            base = postprocess.protocol
            base_threshold = protocols[base].threshold if base in protocols else "tuned"
            thr = tuned["threshold"] if base_threshold == "tuned" else float(base_threshold)
            doc["postprocess"][model] = {
                "threshold": thr,
                "protocol": base,
                "definition": "greedy: drop the lower-probability member of interacting predicted pairs, lowest probability first, until pooled DDI <= target; prauc = unchanged probabilities, prauc_masked = removed drugs' probabilities set to 0",
                "curve": ddi_tradeoff(
                    p_test, y_test, thr, ddi, [*postprocess.targets, float("inf")]
                ),
            }
            # the +inf target is the untouched starting point
            curve = doc["postprocess"][model]["curve"]
            curve[-1]["target"] = None
            doc["postprocess"][model]["curve"] = [curve[-1]] + curve[:-1]
    return doc


def _ddi_matrix(ddi_adjacency: pd.DataFrame | None, meds: list[str]) -> np.ndarray | None:
    if ddi_adjacency is None:
        return None
    frame = ddi_adjacency.copy()
    if "Unnamed: 0" in frame.columns or frame.columns[0] in ("", "index", "atc3"):
        frame = frame.set_index(frame.columns[0])
    frame.index = frame.index.astype(str)
    missing = [m for m in meds if m not in frame.index or m not in frame.columns]
    if missing:
        raise ValueError(
            f"ddi_adjacency: {len(missing)} medication(s) of vocab['medication'] are not both a row and "
            f"a column, e.g. {missing[:5]}; expected a square table indexed by vocab['medication']"
        )
    return frame.loc[meds, meds].to_numpy(dtype=np.float64)


def flat_metrics(
    doc: Mapping[str, Any], groups: Sequence[str] = GROUPS + RARE_GROUPS
) -> dict[str, float]:
    """Flat ``{model.protocol.group.metric: mean}`` for MLflow (round means, point DDI)."""
    out: dict[str, float] = {}
    for model, per_protocol in doc["models"].items():
        for pname, per_group in per_protocol.items():
            for group in groups:
                res = per_group.get(group) or {}
                for metric, s in res.get("rounds", {}).items():
                    out[f"{model}.{pname}.{group}.{metric}"] = s["mean"]
                for metric in DDI_METRICS:
                    if metric in res.get("point", {}):
                        out[f"{model}.{pname}.{group}.{metric}_all"] = res["point"][metric]
        if model in doc.get("thresholds", {}):
            out[f"{model}.threshold_tuned"] = doc["thresholds"][model]["threshold"]
    gt = doc.get("ground_truth_ddi") or {}
    for k, v in gt.items():
        out[f"ground_truth.ddi_rate_{k}"] = v
    return out
