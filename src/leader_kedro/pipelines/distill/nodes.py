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
    params,
):
    from leader_kedro.student_training import train_student, variant_params

    vparams = variant_params(params, variant)
    kd_on = vparams.get("kd", {}).get("enabled", True)
    if kd_on and params.get("check_features", True):
        from leader_kedro.features import check_fresh

        check_fresh(teacher_features, teacher_card, prompts_train)
    return train_student(
        samples_train,
        samples_val,
        vocab,
        vparams,
        teacher_features=teacher_features if kd_on else None,
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
    bundle, history = _train(
        "main",
        samples_train,
        samples_val,
        vocab,
        code_names,
        teacher_features,
        teacher_card,
        prompts_train,
        params,
    )
    return bundle, history


def predict_student(
    student_model, samples_val: pd.DataFrame, samples_test: pd.DataFrame, params: dict
):
    bs = int(params.get("training", {}).get("eval_batch_size", 256))
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
    from leader_kedro.student import predictions_frame

    if not params.get("ablations", True):
        logger.info("distill.ablations is false: skipping the '%s' student", variant)
        empty = predictions_frame([], np.zeros((0, len(vocab["medication"]))), vocab)
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
        params,
    )
    bs = int(params.get("training", {}).get("eval_batch_size", 256))
    return (
        bundle.predictions_table(samples_val, bs),
        bundle.predictions_table(samples_test, bs),
        history,
    )


def evaluate_students(
    samples_test: pd.DataFrame,
    vocab: dict,
    student_predictions_test: pd.DataFrame,
    student_no_kd_predictions_test: pd.DataFrame,
    student_no_align_predictions_test: pd.DataFrame,
    teacher_predictions_test: pd.DataFrame,
    history_main: dict,
    history_no_kd: dict,
    history_no_align: dict,
    params: dict,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``distill_metrics`` (test metrics per variant and patient group) and the training histories."""
    from leader_kedro.student_training import compare_predictions

    metrics = compare_predictions(
        samples_test,
        vocab,
        {
            "student": student_predictions_test,
            "student_no_kd": student_no_kd_predictions_test,
            "student_no_align": student_no_align_predictions_test,
            "teacher": teacher_predictions_test,
        },
        threshold=float(params.get("threshold", 0.3)),
    )
    metrics["training"] = {
        name: {
            k: h.get(k)
            for k in (
                "best_epoch",
                "best_val_prauc",
                "epochs_run",
                "train_seconds",
                "n_parameters",
                "skipped",
            )
        }
        for name, h in (
            ("student", history_main),
            ("student_no_kd", history_no_kd),
            ("student_no_align", history_no_align),
        )
    }
    from leader_kedro import tracking

    for variant, groups in metrics["test"].items():
        for group, values in (groups or {}).items():
            if isinstance(values, dict) and group != "n":
                tracking.log_metrics(
                    {k: v for k, v in values.items() if k in ("prauc", "jaccard", "f1")},
                    prefix=f"distill.test.{variant}.{group}.",
                )
    history = {
        "student": history_main,
        "student_no_kd": history_no_kd,
        "student_no_align": history_no_align,
    }
    return metrics, history


def register_student(
    student_model, samples_test: pd.DataFrame, distill_metrics: dict, params: dict
) -> dict:
    """Log + register the student as the MLflow pyfunc ``leader-student`` when a run is active."""
    import mlflow

    reg = params.get("registry", {})
    if not reg.get("enabled", True):
        return {"registered": False, "reason": "distill.registry.enabled is false"}
    if mlflow.active_run() is None:
        reason = "no active MLflow run (tracking is off for this environment/pipeline)"
        logger.warning("leader-student not registered: %s", reason)
        return {"registered": False, "reason": reason}
    from leader_kedro.serving import log_student_model

    info = log_student_model(
        student_model,
        samples_test,
        name=reg.get("artifact_name", "leader_student"),
        registered_model_name=reg.get("model_name", "leader-student"),
        top_k=int(reg.get("top_k", 10)),
    )
    overall = ((distill_metrics.get("test") or {}).get("student") or {}).get("overall") or {}
    return {"registered": True, **info, "test_overall": overall}
