"""Thin nodes of the evaluate stage: unpack parameters, call the core modules, return artifacts."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def baseline_mostfreq(
    samples_train: pd.DataFrame, samples_val: pd.DataFrame, samples_test: pd.DataFrame, vocab: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from leader_kedro import baselines

    return (
        baselines.most_frequent(samples_train, samples_val, vocab),
        baselines.most_frequent(samples_train, samples_test, vocab),
    )


def baseline_logreg(
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    params: dict,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from leader_kedro import baselines, tracking

    p = params.get("logreg", {})
    out, report = baselines.logreg(
        samples_train,
        {"val": samples_val, "test": samples_test},
        vocab,
        c=float(p.get("C", 1.0)),
        max_iter=int(p.get("max_iter", 200)),
        seed=int(params.get("seed", 42)),
        class_weight=p.get("class_weight"),
    )
    logger.info("logreg baseline: %s", report)
    tracking.log_metrics(report, prefix="baseline_logreg.")
    return out["val"], out["test"]


def evaluate_models(
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    ddi_adjacency: pd.DataFrame,
    params: dict,
    **predictions: pd.DataFrame,
) -> dict[str, Any]:
    """``predictions`` holds ``{model}_val`` / ``{model}_test`` tables for every wired model;
    ``params["models"]`` picks which of them are compared, in which order."""
    from leader_kedro import evaluation, tracking

    models = list(params.get("models") or [])
    wired = sorted({k.rsplit("_", 1)[0] for k in predictions})
    unknown = [m for m in models if f"{m}_val" not in predictions or f"{m}_test" not in predictions]
    if unknown:
        raise ValueError(
            f"evaluate.models lists {unknown}, which the evaluate pipeline does not wire; "
            f"available: {wired} (add it to create_pipeline(models=...) and the catalog)"
        )
    doc = evaluation.evaluate_models(
        {m: (predictions[f"{m}_val"], predictions[f"{m}_test"]) for m in models},
        samples_val,
        samples_test,
        vocab,
        ddi_adjacency,
        protocols=params.get("protocols"),
        tuning=params.get("threshold_tuning"),
        postprocess=params.get("ddi_postprocess"),
        seed=int(params.get("seed", 42)),
        ci=float(params.get("ci", 0.95)),
    )
    tracking.log_metrics(evaluation.flat_metrics(doc), prefix="eval.")
    return doc


def measure_efficiency(
    teacher_model,
    student_model,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    params: dict,
) -> dict[str, Any]:
    from leader_kedro import efficiency, tracking

    p = params.get("efficiency", {})
    if not p.get("enabled", True):
        return {"enabled": False}
    result = efficiency.measure(
        teacher_model,
        student_model,
        prompts_test,
        samples_test,
        batch_sizes=tuple(p.get("batch_sizes", (1, 32))),
        latency_samples=int(p.get("latency_samples", 64)),
        throughput_samples=int(p.get("throughput_samples", 256)),
        warmup=int(p.get("warmup", 3)),
        num_threads=p.get("num_threads"),
        teacher_threads=p.get("teacher_threads"),
        student_threads=p.get("student_threads"),
    )
    logger.info("efficiency:\n%s", efficiency.format_table(result))
    flat = {f"ratio.{k}": v for k, v in result["ratios"].items() if v is not None}
    for side in ("teacher", "student"):
        r = result[side]
        flat[f"{side}.latency_ms_p50"] = r["latency_ms_p50"]
        flat[f"{side}.latency_ms_p95"] = r["latency_ms_p95"]
        flat[f"{side}.n_parameters"] = r["n_parameters"]
        for bs, v in r["throughput"].items():
            flat[f"{side}.throughput_b{bs}"] = v
    tracking.log_metrics(flat, prefix="efficiency.")
    result["enabled"] = True
    return result


def make_report(metrics: dict, efficiency: dict, ingest_report: dict, params: dict):
    """Markdown report + three figures (PRAUC by group, accuracy vs DDI, efficiency)."""
    from leader_kedro import report

    p = params.get("report", {})
    labels = p.get("model_labels") or {}
    gpu = report.load_optional_json(p.get("gpu_results"))
    eff = (
        efficiency
        if efficiency and efficiency.get("enabled", True) and "teacher" in efficiency
        else None
    )
    protocol = p.get("plot_protocol", "leader")
    plots = {
        "PRAUC by patient group": "prauc_by_group.png",
        "Accuracy vs DDI trade-off": "ddi_tradeoff.png",
        "Inference cost": "efficiency.png",
    }
    text = report.render_markdown(
        metrics, eff, ingest_report, gpu=gpu, labels=labels, plots=plots, targets=p.get("targets")
    )
    fig_groups = report.plot_metric_by_group(metrics, protocol, "prauc", labels)
    fig_tradeoff = report.plot_ddi_tradeoff(metrics, labels)
    fig_eff = report.plot_efficiency(eff, gpu)
    return text, fig_groups, fig_tradeoff, fig_eff
