"""Thin nodes for the teacher stage: unpack parameters, call the core, return tables/dicts."""

from __future__ import annotations

import pandas as pd


def train_teacher(
    prompts_train: pd.DataFrame,
    samples_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    vocab: dict,
    params: dict,
    seed: int,
):
    """Fine-tune the teacher on the train prompts, early-stopped on val PRAUC."""
    from leader_kedro.config import build_config
    from leader_kedro.teacher import training as teacher_training

    config = build_config(teacher_training.TeacherConfig, params, "teacher")
    bundle, history = teacher_training.train_teacher(
        prompts_train,
        samples_train,
        prompts_val,
        samples_val,
        vocab["medication"],
        config,
        seed=int(seed),
    )
    return bundle, history


def predict_teacher(
    teacher_model,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    training_history: dict,
    params: dict,
):
    """Val/test probabilities (predictions contract) and the teacher card (provenance + metrics)."""
    from leader_kedro import tracking
    from leader_kedro.config import build_config
    from leader_kedro.teacher import training as teacher_training

    config = build_config(teacher_training.TeacherConfig, params, "teacher")
    threshold, batch_size = config.threshold, config.predict_batch_size
    progress = not config.disable_tqdm
    pred_val, m_val = teacher_training.evaluate_split(
        teacher_model, prompts_val, samples_val, "val", threshold, batch_size, progress
    )
    pred_test, m_test = teacher_training.evaluate_split(
        teacher_model, prompts_test, samples_test, "test", threshold, batch_size, progress
    )
    card = teacher_training.teacher_card(teacher_model, m_val, m_test, training_history, threshold)
    tracking.log_metrics(m_val, prefix="teacher.val.")
    tracking.log_metrics(m_test, prefix="teacher.test.")
    tracking.log_dict(card, "teacher/teacher_card.json")
    return pred_val, pred_test, card


def teacher_seed_predictions(
    teacher_predictions_val: pd.DataFrame,
    teacher_predictions_test: pd.DataFrame,
    prompts_train: pd.DataFrame,
    samples_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    samples_val: pd.DataFrame,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    params: dict,
    seed: int,
) -> pd.DataFrame:
    """``teacher_seed_predictions``: the val/test predictions of the ``teacher.n_seeds`` teachers
    (seeds ``seed, seed+1, ...``) in the ``student_seed_predictions`` format. The first seed is
    ``teacher_model`` (its prediction tables, no retraining); each further seed is trained and
    predicts here, and its model is not saved."""
    from leader_kedro import tracking
    from leader_kedro.config import build_config
    from leader_kedro.teacher import training as teacher_training

    config = build_config(teacher_training.TeacherConfig, params, "teacher")
    table, runs = teacher_training.seed_predictions(
        teacher_predictions_val,
        teacher_predictions_test,
        prompts_train,
        samples_train,
        prompts_val,
        samples_val,
        prompts_test,
        samples_test,
        vocab["medication"],
        config,
        seed=int(seed),
    )
    for run in runs:
        tracking.log_metrics(
            {"best_val_prauc": run["best_val_prauc"], "val_prauc": run["val_prauc"]},
            prefix=f"teacher.seed{run['seed']}.",
        )
    return table
