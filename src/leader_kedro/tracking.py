"""Thin MLflow helpers for core code: log when kedro-mlflow opened a run, do nothing otherwise.

Tests run with tracking off (``conf/test``); the same code then simply does not log.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def _active():
    import mlflow

    return mlflow.active_run()


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    if _active() is None:
        return
    import mlflow

    clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None and v == v}
    mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if _active() is None:
        return
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(data: dict, artifact_file: str) -> None:
    if _active() is None:
        return
    import mlflow

    mlflow.log_dict(data, artifact_file)
