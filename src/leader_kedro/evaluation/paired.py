"""Paired, patient-level bootstrap of the difference between two models (over seeds too).

Plain numpy/pandas, importable without Kedro (docs/evaluate.md, "Paired comparisons").

For a comparison ``A - B`` and a group of test samples the statistic is the difference of the
per-sample PRAUC (average precision of the sample's probability row against its label row,
:func:`metrics.average_precision_per_sample`) averaged over the samples of the group. A model with
several training seeds contributes, per sample, its PRAUC averaged over the seeds.

Each bootstrap round

- draws the group's test **patients** with replacement (as many draws as patients): every sample of
  a drawn patient enters the round as often as the patient was drawn, so the visits of one patient
  always move together;
- draws each model's **seeds** with replacement (as many draws as seeds) and averages the model's
  per-sample PRAUC over the drawn seeds. Two models with the same seed list get the same seed draws
  (a paired draw: seed 43 of the student against seed 43 of its ablation); a model with one
  prediction table (the teacher with ``teacher.n_seeds: 1``, one trained run; the deterministic
  baselines; the oracle) always uses it. With ``teacher.n_seeds > 1`` the teacher's seeds come
  from ``teacher_seed_predictions``.

The patient draws of a group are the same for every comparison, and the seed draws of a seed list
the same in every group; all of them come from ``paired.seed``. The per-sample PRAUC of every
(model, seed) is computed once; a round is then index arithmetic on per-patient sums.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.config import build_config
from leader_kedro.contracts import (
    GROUPS,
    ORACLE,
    RARE_GROUPS,
    RARE_MAX_COUNT,
    ParameterError,
    diagnosis_counts,
    group_masks,
    label_matrix,
    prediction_matrix,
)
from leader_kedro.evaluation import metrics as M

logger = logging.getLogger(__name__)

METRIC = "prauc"
SEED_TABLE = "student_seed_predictions"
#: The teacher's seeds (``teacher.n_seeds``), same format as :data:`SEED_TABLE`.
TEACHER_SEED_TABLE = "teacher_seed_predictions"

#: ``[a, b]`` pairs: the statistic is ``a - b`` (positive: ``a`` is better).
DEFAULT_COMPARISONS: tuple[tuple[str, ...], ...] = (
    ("student", "student_no_kd"),
    ("student", "student_shuffled_kd"),
    ("teacher", "student_no_kd"),
    ("student", "teacher"),
    ("student", "baseline_logreg"),
    ("student", ORACLE),
)
DEFAULT_GROUPS: tuple[str, ...] = ("overall", "single_visit", "multi_visit", "rare_dx")


@dataclass(frozen=True)
class PairedConfig:
    """``params:evaluate.paired``: bootstrap rounds, interval level, seed, groups, comparisons."""

    rounds: int = 1000
    level: float = 0.95
    seed: int = 42
    groups: tuple[str, ...] = DEFAULT_GROUPS
    comparisons: tuple[tuple[str, ...], ...] = DEFAULT_COMPARISONS

    def __post_init__(self):
        where = "evaluate.paired"
        if self.rounds < 1:
            raise ParameterError(f"{where}.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.level < 1:
            raise ParameterError(f"{where}.level must be in (0, 1), got {self.level}")
        known = (*GROUPS, *RARE_GROUPS)
        unknown = [g for g in self.groups if g not in known]
        if unknown:
            raise ParameterError(f"{where}.groups: unknown {unknown}; known groups {list(known)}")
        for i, pair in enumerate(self.comparisons):
            if len(pair) != 2:
                raise ParameterError(
                    f"{where}.comparisons[{i}] must be a pair [model_a, model_b], got {list(pair)}"
                )


def paired_config(params: Mapping | PairedConfig | None) -> PairedConfig:
    if isinstance(params, PairedConfig):
        return params
    return build_config(PairedConfig, params, "evaluate.paired")


# ---------------------------------------------------------------------------------------------
# Per-model scores
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelScores:
    """The per-sample PRAUC of one model on the test samples, one row per seed."""

    model: str
    source: str
    seeds: tuple[int, ...] | None  # None: one prediction table without a seed
    scores: np.ndarray = field(repr=False)  # [n_seeds, n_samples]

    @property
    def n_seeds(self) -> int:
        return int(self.scores.shape[0])

    @property
    def seed_key(self) -> tuple:
        """Models with the same key share their seed draws (paired over seeds)."""
        return ("one table",) if self.seeds is None else tuple(self.seeds)


def collect_scores(
    models: Sequence[str],
    samples_test: pd.DataFrame,
    y_true: np.ndarray,
    medications: Sequence[str],
    seed_predictions: pd.DataFrame | None,
    tables: Mapping[str, pd.DataFrame],
    extra_seed_tables: Mapping[str, pd.DataFrame | None] | None = None,
) -> tuple[dict[str, ModelScores], dict[str, str]]:
    """Per-sample PRAUC of each model: from the test rows of ``student_seed_predictions`` (one row
    per seed) when the model has any there, else from its ``{model}_predictions_test`` table (one
    seed). Returns the scores and, for each model with neither, why it has none.

    ``extra_seed_tables``: ``{name: table}`` in the same long format (``teacher_seed_predictions``),
    looked up after ``student_seed_predictions``. A model's rows there are used when they hold two
    or more seeds, or when the model has no ``{model}_predictions_test`` rows; one seed beside its
    own table is that table (the teacher with ``teacher.n_seeds: 1``), which is used as before."""
    meds = list(medications)
    seed_tables = [(SEED_TABLE, _test_rows(seed_predictions))]
    given = {name: t for name, t in (extra_seed_tables or {}).items() if t is not None}
    seed_tables += [(name, _test_rows(t)) for name, t in given.items()]
    scores: dict[str, ModelScores] = {}
    missing: dict[str, str] = {}
    for model in dict.fromkeys(models):
        table = tables.get(model)
        has_table = table is not None and not table.empty
        found = None
        for source, test_rows in seed_tables:
            own = test_rows[test_rows["model"] == model] if test_rows is not None else None
            if own is None or own.empty:
                continue
            if source != SEED_TABLE and has_table and own["seed"].nunique() < 2:
                continue
            found = _seed_scores(model, source, own, samples_test, y_true, meds)
            break
        if found is not None:
            scores[model] = found
            continue
        name = f"{model}_predictions_test"
        if table is not None and not table.empty:
            prob = prediction_matrix(table, samples_test, meds, name)
            per = M.average_precision_per_sample(y_true, prob)
            scores[model] = ModelScores(model, name, None, per[None, :])
            continue
        why = "has no rows" if table is not None else "is not wired into the evaluate pipeline"
        sources = " or ".join(src for src, _ in seed_tables)
        reason = f"{model}: no test predictions (none in {sources}; {name} {why})"
        if model == ORACLE:
            reason += "; only the synthetic generator knows true probabilities (none for MIMIC)"
        missing[model] = reason
    return scores, missing


def _test_rows(seed_predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    """The ``split == "test"`` rows of a long seed table; None for an absent or empty one."""
    if seed_predictions is None or seed_predictions.empty:
        return None
    return seed_predictions[seed_predictions["split"] == "test"]


def _seed_scores(
    model: str,
    source: str,
    own: pd.DataFrame,
    samples_test: pd.DataFrame,
    y_true: np.ndarray,
    meds: list[str],
) -> ModelScores:
    """One row of per-sample PRAUC per seed of ``model``'s test rows in the seed table ``source``."""
    seeds = sorted(int(s) for s in own["seed"].unique())
    rows = []
    for s in seeds:
        frame = own[own["seed"] == s]
        name = f"{source}[model={model}, seed={s}, split=test]"
        prob = prediction_matrix(frame, samples_test, meds, name)
        rows.append(M.average_precision_per_sample(y_true, prob))
    return ModelScores(model, source, tuple(seeds), np.vstack(rows))


# ---------------------------------------------------------------------------------------------
# Draws and the bootstrap
# ---------------------------------------------------------------------------------------------


def _uniform_counts(rng: np.random.Generator, n: int, rounds: int) -> np.ndarray:
    """``[rounds, n]`` counts of ``n`` draws with replacement among ``n`` units, per round."""
    if n == 1:
        return np.ones((rounds, 1), dtype=np.int64)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=rounds)


def patient_draws(n_patients: int, rounds: int, seed: int, stream: int = 0) -> np.ndarray:
    """``[rounds, n_patients]``: how often each patient is drawn in each round (seeded)."""
    rng = np.random.default_rng([_u32(seed), 0, stream])
    return _uniform_counts(rng, n_patients, rounds)


def seed_draws(seed_key: tuple, n_seeds: int, rounds: int, seed: int) -> np.ndarray:
    """``[rounds, n_seeds]``: how often each seed is drawn in each round. The same ``seed_key``
    (the model's seed list) gives the same draws, which pairs models trained on the same seeds;
    a one-seed model always uses its seed."""
    if n_seeds == 1:
        return np.ones((rounds, 1), dtype=np.int64)
    entropy = [_u32(seed), 1, n_seeds, *(_u32(s) for s in seed_key if isinstance(s, int))]
    return _uniform_counts(np.random.default_rng(entropy), n_seeds, rounds)


def _u32(value: int) -> int:
    return int(value) % 2**32


def bootstrap_differences(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    patient: np.ndarray,
    patient_counts: np.ndarray,
    seeds_a: np.ndarray,
    seeds_b: np.ndarray,
) -> np.ndarray:
    """The statistic of every round: mean over the drawn samples of (A - B), each model's
    per-sample score averaged over its drawn seeds.

    ``scores_*``: ``[n_seeds, n_samples]``; ``patient``: ``[n_samples]`` patient index in
    ``0..P-1``; ``patient_counts``: ``[rounds, P]``; ``seeds_*``: ``[rounds, n_seeds]`` counts.
    """
    n_patients = patient_counts.shape[1]
    per_patient_a = _per_patient_sums(scores_a, patient, n_patients)  # [S_a, P]
    per_patient_b = _per_patient_sums(scores_b, patient, n_patients)
    n_per_patient = np.bincount(patient, minlength=n_patients).astype(np.float64)
    counts = patient_counts.astype(np.float64)
    mean_a = (seeds_a @ per_patient_a) / scores_a.shape[0]  # [R, P]: drawn-seed mean, summed
    mean_b = (seeds_b @ per_patient_b) / scores_b.shape[0]
    numerator = np.einsum("rp,rp->r", counts, mean_a - mean_b)
    return numerator / (counts @ n_per_patient)


def _per_patient_sums(scores: np.ndarray, patient: np.ndarray, n_patients: int) -> np.ndarray:
    return np.vstack([np.bincount(patient, weights=row, minlength=n_patients) for row in scores])


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# The whole document
# ---------------------------------------------------------------------------------------------


def comparison_name(model_a: str, model_b: str) -> str:
    return f"{model_a} - {model_b}"


def paired_comparisons(
    samples_test: pd.DataFrame,
    vocab: Mapping,
    seed_predictions: pd.DataFrame | None,
    tables: Mapping[str, pd.DataFrame],
    cfg: PairedConfig | Mapping | None = None,
    samples_train: pd.DataFrame | None = None,
    rare_code_max_count: int = RARE_MAX_COUNT,
    teacher_seed_predictions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Every comparison of ``cfg.comparisons`` in every group of ``cfg.groups``.

    ``seed_predictions``: the long ``student_seed_predictions`` table (its ``split == "test"``
    rows are used); ``tables``: ``{model: {model}_predictions_test}`` for the one-table models.
    ``teacher_seed_predictions``: the teacher's seeds in the same format (``teacher.n_seeds``);
    absent, empty or with one seed, the teacher is its ``teacher_predictions_test`` table.
    ``samples_train`` gives the rare-code stratum (``rare_dx``); without it that group is skipped.
    Samples without a label are left out (their PRAUC is undefined), for every model alike.

    Returns ``{"metric", "rounds", "level", "seed", "models", "rows", "skipped", ...}``
    (docs/evaluate.md); each row: ``comparison, model_a, model_b, group, metric, mean, ci_low,
    ci_high, excludes_zero, n_seeds ({model_a: k, model_b: k}), n_patients, n_samples, rounds``.
    """
    cfg = paired_config(cfg)
    meds = list(vocab["medication"])
    y_true, _ = label_matrix(samples_test, vocab, "samples_test", dtype=np.int8)
    labelled = y_true.any(axis=1)
    names = [m for pair in cfg.comparisons for m in pair]
    scores, missing = collect_scores(
        names,
        samples_test,
        y_true,
        meds,
        seed_predictions,
        tables,
        {TEACHER_SEED_TABLE: teacher_seed_predictions},
    )

    counts = diagnosis_counts(samples_train) if samples_train is not None else None
    masks = group_masks(samples_test, counts, rare_code_max_count)
    subjects = samples_test["subject_id"].to_numpy()

    doc: dict[str, Any] = {
        "metric": METRIC,
        "rounds": cfg.rounds,
        "level": cfg.level,
        "seed": cfg.seed,
        "definition": (
            "mean over the group's test samples of per-sample PRAUC(A) - PRAUC(B), each model's "
            "per-sample PRAUC averaged over its seeds; interval: percentile interval over rounds "
            "that each draw the group's patients with replacement (all samples of a drawn patient) "
            "and each model's seeds with replacement (the same draws for models with the same "
            "seed list; a one-table model always uses its table)"
        ),
        "models": {
            m: {"source": s.source, "seeds": None if s.seeds is None else list(s.seeds)}
            for m, s in scores.items()
        },
        "samples_without_label": int((~labelled).sum()),
        "rows": [],
        "skipped": [],
    }

    pairs = []
    for a, b in cfg.comparisons:
        gone = [missing[m] for m in (a, b) if m in missing]
        if gone:
            reason = "; ".join(gone)
            logger.info("paired comparison %s skipped: %s", comparison_name(a, b), reason)
            doc["skipped"].append(
                {"comparison": comparison_name(a, b), "model_a": a, "model_b": b, "reason": reason}
            )
        else:
            pairs.append((a, b))

    draws: dict[tuple, np.ndarray] = {}

    def seeds_of(model: str) -> np.ndarray:
        s = scores[model]
        if s.seed_key not in draws:
            draws[s.seed_key] = seed_draws(s.seed_key, s.n_seeds, cfg.rounds, cfg.seed)
        return draws[s.seed_key]

    for g_index, group in enumerate(cfg.groups):
        mask = masks[group] & labelled if group in masks else None
        if mask is None or not mask.any():
            reason = (
                f"group {group!r} needs samples_train (rare-code counts)"
                if mask is None
                else f"no labelled test sample in group {group!r}"
            )
            doc["skipped"].extend(
                {
                    "comparison": comparison_name(a, b),
                    "model_a": a,
                    "model_b": b,
                    "group": group,
                    "reason": reason,
                }
                for a, b in pairs
            )
            continue
        patient, uniques = pd.factorize(subjects[mask])
        n_patients = len(uniques)
        patient_counts = patient_draws(n_patients, cfg.rounds, cfg.seed, g_index)
        for a, b in pairs:
            sa, sb = scores[a].scores[:, mask], scores[b].scores[:, mask]
            values = bootstrap_differences(
                sa, sb, patient, patient_counts, seeds_of(a), seeds_of(b)
            )
            lo, hi = percentile_interval(values, cfg.level)
            doc["rows"].append(
                {
                    "comparison": comparison_name(a, b),
                    "model_a": a,
                    "model_b": b,
                    "group": group,
                    "metric": METRIC,
                    "mean": float(sa.mean(axis=0).mean() - sb.mean(axis=0).mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                    "excludes_zero": bool(lo > 0 or hi < 0),
                    "n_seeds": {a: scores[a].n_seeds, b: scores[b].n_seeds},
                    "n_patients": int(n_patients),
                    "n_samples": int(mask.sum()),
                    "rounds": cfg.rounds,
                }
            )
    return doc


def flat_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    """``{a-vs-b.group.{mean,ci_low,ci_high}: value}`` for MLflow."""
    out = {}
    for row in doc.get("rows", []):
        key = f"{row['model_a']}-vs-{row['model_b']}.{row['group']}"
        for stat in ("mean", "ci_low", "ci_high"):
            out[f"{key}.{stat}"] = row[stat]
    return out
