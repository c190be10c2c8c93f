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


def log_metric_history(rows: list[Mapping[str, float]], prefix: str = "", step_key: str = "epoch"):
    """Per-step rows (e.g. one per epoch) in ONE call (``log_batch``), with ``row[step_key]`` as step."""
    run = _active()
    if run is None or not rows:
        return
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{k}", float(v), now, int(row[step_key]))
        for row in rows
        for k, v in row.items()
        if k != step_key and v is not None and v == v
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):  # the store's batch limit
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
