"""Thin nodes of the distill stage: unpack params, call the core, return tables/dicts."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def _train(
    variant,
    samples_train,
    samples_val,
    vocab,
    code_names,
    teacher_features,
    teacher_card,
    prompts_train,
    cfg,
):
    from leader_kedro.student.training import train_student, variant_config

    vcfg = variant_config(cfg, variant)
    if vcfg.kd.enabled and cfg.check_features:
        from leader_kedro.teacher.features import check_fresh

        check_fresh(teacher_features, teacher_card, prompts_train)
    return train_student(
        samples_train,
        samples_val,
        vocab,
        vcfg,
        teacher_features=teacher_features if vcfg.kd.enabled else None,
        code_names=code_names,
        variant=variant,
    )


def train_student_main(
    samples_train,
    samples_val,
    vocab,
    code_names,
    teacher_features,
    teacher_card,
    prompts_train,
    params,
):
    """The main student (KD, alignment and profile as configured)."""
    from leader_kedro.student.training import distill_config

    return _train(
        "main",
        samples_train,
        samples_val,
        vocab,
        code_names,
        teacher_features,
        teacher_card,
        prompts_train,
        distill_config(params),
    )


def predict_student(
    student_model, samples_val: pd.DataFrame, samples_test: pd.DataFrame, params: dict
):
    from leader_kedro.student.training import distill_config

    bs = distill_config(params).training.eval_batch_size
    return student_model.predictions_table(samples_val, bs), student_model.predictions_table(
        samples_test, bs
    )


def train_ablation(
    variant,
    samples_train,
    samples_val,
    samples_test,
    vocab,
    code_names,
    teacher_features,
    teacher_card,
    prompts_train,
    params,
):
    """An ablation student (``variant`` = ``no_kd`` | ``no_align``): its val/test predictions and
    training history. ``distill.ablations: false`` skips it and writes empty tables."""
    from leader_kedro.contracts import predictions_frame
    from leader_kedro.student.training import distill_config

    cfg = distill_config(params)
    if not cfg.ablations:
        logger.info("distill.ablations is false: skipping the '%s' student", variant)
        meds = vocab["medication"]
        empty = predictions_frame([], np.zeros((0, len(meds))), meds)
        return (
            empty,
            empty.copy(),
            {"variant": variant, "skipped": True, "reason": "distill.ablations: false"},
        )
    bundle, history = _train(
        variant,
        samples_train,
        samples_val,
        vocab,
        code_names,
        teacher_features,
        teacher_card,
        prompts_train,
        cfg,
    )
    bs = cfg.training.eval_batch_size
    return (
        bundle.predictions_table(samples_val, bs),
        bundle.predictions_table(samples_test, bs),
        history,
    )


def evaluate_students(
    samples_test: pd.DataFrame,
    vocab: dict,
    teacher_predictions_test: pd.DataFrame,
    params: dict,
    **variants: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``distill_metrics`` (test metrics per variant and patient group) and the training histories.

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
    summary_keys = (
        "best_epoch",
        "best_val_prauc",
        "epochs_run",
        "train_seconds",
        "n_parameters",
        "skipped",
    )
    metrics["training"] = {m: {k: h.get(k) for k in summary_keys} for m, h in history.items()}
    for variant, groups in metrics["test"].items():
        for group, values in (groups or {}).items():
            if isinstance(values, dict) and group != "n":
                tracking.log_metrics(
                    {k: v for k, v in values.items() if k in ("prauc", "jaccard", "f1")},
                    prefix=f"distill.test.{variant}.{group}.",
                )
    return metrics, history


def register_student(
    student_model, samples_test: pd.DataFrame, distill_metrics: dict, params: dict
) -> dict:
    """Log + register the student as the MLflow pyfunc ``leader-student`` when a run is active."""
    import mlflow

    from leader_kedro.student.training import distill_config

    reg = distill_config(params).registry
    if not reg.enabled:
        return {"registered": False, "reason": "distill.registry.enabled is false"}
    if mlflow.active_run() is None:
        reason = "no active MLflow run (tracking is off for this environment/pipeline)"
        logger.warning("leader-student not registered: %s", reason)
        return {"registered": False, "reason": reason}
    from leader_kedro.student.serving import log_student_model

    info = log_student_model(
        student_model,
        samples_test,
        name=reg.artifact_name,
        registered_model_name=reg.model_name,
        top_k=reg.top_k,
    )
    overall = ((distill_metrics.get("test") or {}).get("student") or {}).get("overall") or {}
    return {"registered": True, **info, "test_overall": overall}
