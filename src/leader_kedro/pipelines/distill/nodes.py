"""Thin nodes of the distill stage: unpack params, call the core, return tables/dicts."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Per-student keys of ``distill_metrics["training"]``.
SUMMARY_KEYS = (
    "best_epoch",
    "best_val_prauc",
    "epochs_run",
    "train_seconds",
    "train_samples_per_second",
    "n_parameters",
    "skipped",
)


def _checked_prepare(
    cfg,
    needs_teacher: bool,
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    vocab: dict,
    code_names: dict,
    teacher_features,
    teacher_card: dict,
    prompts_train: pd.DataFrame,
    samples_test: pd.DataFrame | None = None,
):
    """The splits encoded once (:func:`student.training.prepare`), after refusing stale teacher
    features when a student distils from them and ``distill.check_features`` is on."""
    from leader_kedro.student.training import prepare

    if needs_teacher and cfg.check_features:
        from leader_kedro.teacher.features import check_fresh

        check_fresh(teacher_features, teacher_card, prompts_train)
    return prepare(
        cfg,
        samples_train,
        samples_val,
        vocab,
        teacher_features if needs_teacher else None,
        code_names,
        samples_test,
        need_teacher=needs_teacher,
    )


def tune_loss_weights(
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    vocab: dict,
    code_names: dict,
    teacher_features,
    teacher_card: dict,
    prompts_train: pd.DataFrame,
    params: dict,
) -> dict[str, Any]:
    """``kd_tuning``: alpha / beta of the main student chosen on val PRAUC over the
    ``distill.tuning`` grid (train and val only), or the configured pair when tuning is off."""
    from leader_kedro import tracking
    from leader_kedro.student.training import distill_config, untuned
    from leader_kedro.student.training import tune_loss_weights as tune

    cfg = distill_config(params)
    if not cfg.tuning.enabled:
        logger.info(
            "distill.tuning.enabled is false: alpha %g, beta %g as configured",
            cfg.kd.alpha,
            cfg.align.beta,
        )
        return untuned(cfg)
    prepared = _checked_prepare(
        cfg,
        cfg.kd.enabled,
        samples_train,
        samples_val,
        vocab,
        code_names,
        teacher_features,
        teacher_card,
        prompts_train,
    )
    result = tune(cfg, prepared)
    tracking.log_metrics(
        {
            "alpha": result["chosen"]["alpha"],
            "beta": result["chosen"]["beta"],
            "val_prauc": result["chosen_val_prauc"],
        },
        prefix="distill.tuning.chosen.",
    )
    return result


def train_students(
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    code_names: dict,
    teacher_features,
    teacher_card: dict,
    prompts_train: pd.DataFrame,
    kd_tuning: dict,
    params: dict,
) -> dict[str, Any]:
    """Every student variant (main; the no-KD, no-alignment and shuffled-features students when
    ``distill.ablations``) times ``distill.training.n_seeds`` seeds, trained side by side in
    ``training.workers`` processes, with the alpha / beta of ``kd_tuning["chosen"]``. The first
    seed's main student is ``student_model``; the first seed's other variants give their
    prediction tables; every seed's val/test predictions go to ``student_seed_predictions``."""
    from leader_kedro import tracking
    from leader_kedro.contracts import STUDENT_VARIANTS, predictions_frame, seed_predictions_frame
    from leader_kedro.student.training import (
        distill_config,
        variant_config,
        with_loss_weights,
    )
    from leader_kedro.student.training import (
        train_students as train_all,
    )

    cfg = distill_config(params)
    chosen = dict((kd_tuning or {}).get("chosen") or {})
    cfg = with_loss_weights(cfg, chosen.get("alpha"), chosen.get("beta"))
    weights_from = (
        "kd_tuning (val PRAUC)"
        if (kd_tuning or {}).get("enabled")
        else "distill.kd.alpha / distill.align.beta"
    )
    variants = cfg.variants
    needs_teacher = any(variant_config(cfg, v).kd.enabled for v in variants)
    prepared = _checked_prepare(
        cfg,
        needs_teacher,
        samples_train,
        samples_val,
        vocab,
        code_names,
        teacher_features,
        teacher_card,
        prompts_train,
        samples_test,
    )
    trained = train_all(cfg, prepared, variants)
    first = cfg.training.seeds[0]
    meds = vocab["medication"]
    val_ids, test_ids = samples_val["sample_id"].tolist(), samples_test["sample_id"].tolist()
    out: dict[str, Any] = {}
    tables = []
    for variant in STUDENT_VARIANTS:
        model = STUDENT_VARIANTS[variant]
        runs = [t for t in trained if t.variant == variant]
        if not runs:
            logger.info("distill.ablations is false: skipping the '%s' student", variant)
            empty = predictions_frame([], np.zeros((0, len(meds))), meds)
            out[f"{model}_predictions_val"], out[f"{model}_predictions_test"] = empty, empty.copy()
            out[f"student_history_{variant}"] = {
                "variant": variant,
                "skipped": True,
                "reason": "distill.ablations: false",
            }
            continue
        main = next(t for t in runs if t.seed == first)
        history = dict(main.info)
        history["loss_weights_from"] = weights_from
        history["seeds"] = [
            {"seed": t.seed, **{k: t.info.get(k) for k in SUMMARY_KEYS if k in t.info}}
            for t in runs
        ]
        out[f"student_history_{variant}"] = history
        if variant == "main":
            out["student_model"] = main.bundle
            _log_kd_share(main.info)
        else:
            out[f"{model}_predictions_val"] = predictions_frame(val_ids, main.val_probs, meds)
            out[f"{model}_predictions_test"] = predictions_frame(test_ids, _test(main), meds)
        for t in runs:
            suffix = "" if t.seed == first else f"seed{t.seed}."
            tracking.log_metric_history(t.info["history"], prefix=f"student.{variant}.{suffix}")
            tables.append(seed_predictions_frame(model, t.seed, "val", val_ids, t.val_probs, meds))
            tables.append(seed_predictions_frame(model, t.seed, "test", test_ids, _test(t), meds))
    out["student_seed_predictions"] = pd.concat(tables, ignore_index=True)
    return out


def _test(student) -> np.ndarray:
    """A student's test probabilities (the node always prepares the test split)."""
    if student.test_probs is None:
        raise RuntimeError(
            f"student[{student.variant}, seed {student.seed}] has no test predictions"
        )
    return student.test_probs


def _log_kd_share(info: dict) -> None:
    rows = info.get("history") or []
    if not rows or rows[0].get("share_kd") is None:
        return
    logger.info(
        "student[main, seed %d]: KD share of the loss %.3f at epoch 1, %.3f at epoch %d "
        "(alpha %g, kd_standardised %s)",
        info["seed"],
        rows[0]["share_kd"],
        rows[-1]["share_kd"],
        rows[-1]["epoch"],
        info["loss_weights"]["alpha"],
        info.get("kd_standardised"),
    )


def predict_student(
    student_model, samples_val: pd.DataFrame, samples_test: pd.DataFrame, params: dict
):
    from leader_kedro.student.training import distill_config

    bs = distill_config(params).training.eval_batch_size
    return student_model.predictions_table(samples_val, bs), student_model.predictions_table(
        samples_test, bs
    )


def evaluate_students(
    samples_test: pd.DataFrame,
    vocab: dict,
    teacher_predictions_test: pd.DataFrame,
    student_seed_predictions: pd.DataFrame,
    params: dict,
    **variants: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``distill_metrics`` (test metrics per variant and patient group, and per seed) and the
    training histories.

    ``variants`` holds ``{model}_predictions_test`` and ``{model}_history`` for every student
    variant of :data:`contracts.STUDENT_VARIANTS`.
    """
    from leader_kedro import tracking
    from leader_kedro.contracts import STUDENT_VARIANTS
    from leader_kedro.student.training import compare_predictions, distill_config

    cfg = distill_config(params)
    students = list(STUDENT_VARIANTS.values())
    metrics = compare_predictions(
        samples_test,
        vocab,
        {
            **{m: variants[f"{m}_predictions_test"] for m in students},
            "teacher": teacher_predictions_test,
        },
        threshold=cfg.threshold,
    )
    history = {m: variants[f"{m}_history"] for m in students}
    metrics["training"] = {m: {k: h.get(k) for k in SUMMARY_KEYS} for m, h in history.items()}
    metrics["test_by_seed"] = _test_by_seed(samples_test, vocab, student_seed_predictions, cfg)
    for variant, groups in metrics["test"].items():
        for group, values in (groups or {}).items():
            if isinstance(values, dict) and group != "n":
                tracking.log_metrics(
                    {k: v for k, v in values.items() if k in ("prauc", "jaccard", "f1")},
                    prefix=f"distill.test.{variant}.{group}.",
                )
    return metrics, history


def _test_by_seed(samples_test, vocab, seed_predictions: pd.DataFrame, cfg) -> dict[str, Any]:
    """Overall test metrics of every (model, seed), and the mean / sd over seeds of each model."""
    from leader_kedro.student.training import compare_predictions

    out: dict[str, Any] = {}
    test = seed_predictions[seed_predictions["split"] == "test"]
    for (model, seed), frame in test.groupby(["model", "seed"], sort=False):
        result = compare_predictions(
            samples_test,
            vocab,
            {"m": frame.drop(columns=["model", "seed", "split"])},
            cfg.threshold,
        )
        out.setdefault(model, {"seeds": {}})["seeds"][str(seed)] = result["test"]["m"]["overall"]
    for entry in out.values():
        values = list(entry["seeds"].values())
        entry["mean"] = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        entry["sd"] = {
            k: float(np.std([v[k] for v in values], ddof=1)) if len(values) > 1 else 0.0
            for k in values[0]
        }
    return out


def register_student(
    student_model,
    samples_val: pd.DataFrame,
    ddi_adjacency: pd.DataFrame,
    distill_metrics: dict,
    params: dict,
) -> dict:
    """Log + register the student as the MLflow pyfunc ``leader-student`` when a run is active;
    the new version becomes ``champion`` only when its val PRAUC beats the current champion's
    (``student/registry.py``). The run's feature-cache lineage tags go onto the version."""
    import mlflow

    from leader_kedro.student.training import distill_config

    reg = distill_config(params).registry
    if not reg.enabled:
        return {"registered": False, "reason": "distill.registry.enabled is false"}
    run = mlflow.active_run()
    if run is None:
        reason = "no active MLflow run (tracking is off for this environment/pipeline)"
        logger.warning("leader-student not registered: %s", reason)
        return {"registered": False, "reason": reason}
    from leader_kedro.student import registry
    from leader_kedro.student.service import ddi_pairs

    training = (distill_metrics.get("training") or {}).get("student") or {}
    tags = {
        **registry.lineage_tags(run.info.run_id),
        "val_set_fingerprint": registry.val_set_fingerprint(samples_val["sample_id"].tolist()),
    }
    info = registry.log_student(
        student_model,
        ddi_pairs(ddi_adjacency, list(student_model.vocab["medication"])),
        artifact_name=reg.artifact_name,
        model_name=reg.model_name,
        top_k=reg.top_k,
        val_prauc=training.get("best_val_prauc"),
        tags=tags,
    )
    overall = ((distill_metrics.get("test") or {}).get("student") or {}).get("overall") or {}
    return {"registered": True, **info, "lineage": tags, "test_overall": overall}
