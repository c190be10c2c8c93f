"""Thin nodes of the evaluate stage: unpack parameters, call the core modules, return artifacts."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def baseline_mostfreq(
    samples_train: pd.DataFrame, samples_val: pd.DataFrame, samples_test: pd.DataFrame, vocab: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from leader_kedro.evaluation import baselines

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
    from leader_kedro import tracking
    from leader_kedro.evaluation import baselines
    from leader_kedro.evaluation.protocols import evaluate_config

    cfg = evaluate_config(params)
    out, report = baselines.logreg(
        samples_train,
        {"val": samples_val, "test": samples_test},
        vocab,
        c=cfg.logreg.C,
        max_iter=cfg.logreg.max_iter,
        seed=cfg.seed,
        class_weight=cfg.logreg.class_weight,
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
    samples_train: pd.DataFrame | None = None,
    **predictions: pd.DataFrame,
) -> dict[str, Any]:
    """``predictions`` holds ``{model}_val`` / ``{model}_test`` tables for every wired model;
    ``params["models"]`` picks which of them are compared, in which order. The oracle is left out
    when its tables have no rows (a real MIMIC source). ``samples_train`` gives the rare-code
    strata."""
    from leader_kedro import tracking
    from leader_kedro.contracts import ORACLE
    from leader_kedro.evaluation import protocols as evaluation

    cfg = evaluation.evaluate_config(params)
    models = list(cfg.models)
    oracle_test = predictions.get(f"{ORACLE}_test")
    if ORACLE in models and oracle_test is not None and oracle_test.empty:
        models.remove(ORACLE)
        logger.info("no oracle for this source (its predictions have no rows): left out")
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
        cfg,
        samples_train=samples_train,
    )
    tracking.log_metrics(evaluation.flat_metrics(doc), prefix="eval.")
    return doc


def paired_comparisons(
    samples_train: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    student_seed_predictions: pd.DataFrame,
    params: dict,
    teacher_seed_predictions: pd.DataFrame | None = None,
    **predictions: pd.DataFrame,
) -> dict[str, Any]:
    """``paired``: the patient-level bootstrap of ``A - B`` over seeds for every comparison of
    ``evaluate.paired.comparisons``. ``predictions`` holds ``{model}_test`` for every wired model
    (the one-table models: teacher, baselines, oracle); the student variants' seeds come from the
    test rows of ``student_seed_predictions``, the teacher's from ``teacher_seed_predictions`` when
    it holds two or more seeds (``teacher.n_seeds``; wired with the teacher, optional here). A
    comparison whose model has no predictions is listed under ``skipped`` with the reason."""
    from leader_kedro import tracking
    from leader_kedro.evaluation import paired
    from leader_kedro.evaluation.protocols import evaluate_config

    cfg = evaluate_config(params)
    tables = {key.removesuffix("_test"): table for key, table in predictions.items()}
    doc = paired.paired_comparisons(
        samples_test,
        vocab,
        student_seed_predictions,
        tables,
        cfg.paired,
        samples_train=samples_train,
        rare_code_max_count=cfg.rare_code_max_count,
        teacher_seed_predictions=teacher_seed_predictions,
    )
    for row in doc["rows"]:
        if row["group"] == "overall":
            logger.info(
                "paired %s (overall, %s): %+.4f [%+.4f, %+.4f]%s",
                row["comparison"],
                row["n_seeds"],
                row["mean"],
                row["ci_low"],
                row["ci_high"],
                " excludes 0" if row["excludes_zero"] else "",
            )
    tracking.log_metrics(paired.flat_metrics(doc), prefix="paired.")
    return doc


def logreg_learning_curve(
    samples_train: pd.DataFrame,
    samples_val: pd.DataFrame,
    samples_test: pd.DataFrame,
    vocab: dict,
    oracle_predictions_val: pd.DataFrame,
    oracle_predictions_test: pd.DataFrame,
    params: dict,
) -> dict[str, Any]:
    """The logistic regression on 10/25/50/100% of train beside the oracle (when there is one)."""
    from leader_kedro import tracking
    from leader_kedro.evaluation.learning_curve import learning_curve
    from leader_kedro.evaluation.protocols import evaluate_config

    cfg = evaluate_config(params)
    if not cfg.learning_curve.enabled:
        return {"enabled": False}
    out = learning_curve(
        samples_train,
        samples_val,
        samples_test,
        vocab,
        cfg,
        oracle=(oracle_predictions_val, oracle_predictions_test),
    )
    flat = {f"logreg_{r['fraction']:g}.prauc": r["overall"]["prauc"] for r in out["curve"]}
    if out["oracle"]:
        flat["oracle.prauc"] = out["oracle"]["overall"]["prauc"]
    tracking.log_metrics(flat, prefix="learning_curve.")
    return {"enabled": True, **out}


def measure_efficiency(
    teacher_model,
    student_model,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    params: dict,
) -> dict[str, Any]:
    from leader_kedro import tracking
    from leader_kedro.evaluation import efficiency
    from leader_kedro.evaluation.protocols import evaluate_config

    p = evaluate_config(params).efficiency
    if not p.enabled:
        return {"enabled": False}
    result = efficiency.measure(
        teacher_model,
        student_model,
        prompts_test,
        samples_test,
        batch_sizes=p.batch_sizes,
        latency_samples=p.latency_samples,
        throughput_samples=p.throughput_samples,
        warmup=p.warmup,
        num_threads=p.num_threads,
        teacher_threads=p.teacher_threads,
        student_threads=p.student_threads,
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


def make_report(
    metrics: dict,
    efficiency: dict,
    ingest_report: dict,
    learning_curve: dict,
    params: dict,
    node_timings: dict | None = None,
    paired: dict | None = None,
):
    """Markdown report (headed by the paired comparisons) + three figures (PRAUC by group,
    accuracy vs DDI, efficiency)."""
    from leader_kedro.evaluation import report
    from leader_kedro.evaluation.protocols import evaluate_config

    p = evaluate_config(params).report
    labels = p.model_labels
    gpu = report.load_optional_json(p.gpu_results)
    eff = (
        efficiency
        if efficiency and efficiency.get("enabled", True) and "teacher" in efficiency
        else None
    )
    protocol = p.plot_protocol
    plots = {
        "PRAUC by patient group": "prauc_by_group.png",
        "Accuracy vs DDI trade-off": "ddi_tradeoff.png",
        "Inference cost": "efficiency.png",
    }
    curve = learning_curve if learning_curve and learning_curve.get("enabled", True) else None
    text = report.render_markdown(
        metrics,
        eff,
        ingest_report,
        gpu=gpu,
        labels=labels,
        plots=plots,
        targets=p.targets,
        learning_curve=curve,
        node_timings=node_timings,
        paired=paired,
    )
    fig_groups = report.plot_metric_by_group(metrics, protocol, "prauc", labels)
    fig_tradeoff = report.plot_ddi_tradeoff(metrics, labels)
    fig_eff = report.plot_efficiency(eff, gpu)
    return text, fig_groups, fig_tradeoff, fig_eff
