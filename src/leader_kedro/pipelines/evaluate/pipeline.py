"""Evaluate pipeline: baselines -> metrics (labelled protocols, groups, DDI trade-off) and the
paired patient-level bootstrap over seeds -> efficiency -> markdown report and plots
(data/08_reporting, logged to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from leader_kedro.contracts import MODELS
from leader_kedro.pipelines.evaluate import nodes

DEFAULT_MODELS = MODELS


def create_pipeline(
    models: Sequence[str] = DEFAULT_MODELS, with_efficiency: bool = True, **kwargs
) -> Pipeline:
    """``models``: the prediction datasets wired into the comparison (``{model}_predictions_{split}``);
    the ``evaluate.models`` parameter picks and orders among them. ``oracle_predictions_{split}``
    comes from ingest for every source; it has rows only for the synthetic one. With ``teacher``
    among them, the paired comparisons also read ``teacher_seed_predictions`` (the teacher's
    seeds, ``teacher.n_seeds``; made by the teacher stage beside ``teacher_predictions_*``)."""
    prediction_inputs = {
        f"{m}_{split}": f"{m}_predictions_{split}" for m in models for split in ("val", "test")
    }
    # the teacher's seeds (teacher.n_seeds) come with the teacher, from the teacher stage
    teacher_seeds = (
        {"teacher_seed_predictions": "teacher_seed_predictions"} if "teacher" in models else {}
    )
    node_list = [
        Node(
            nodes.baseline_mostfreq,
            inputs=["samples_train", "samples_val", "samples_test", "vocab"],
            outputs=["baseline_mostfreq_predictions_val", "baseline_mostfreq_predictions_test"],
            name="baseline_mostfreq",
            tags=["evaluate", "baselines"],
        ),
        Node(
            nodes.baseline_logreg,
            inputs=["samples_train", "samples_val", "samples_test", "vocab", "params:evaluate"],
            outputs=["baseline_logreg_predictions_val", "baseline_logreg_predictions_test"],
            name="baseline_logreg",
            tags=["evaluate", "baselines"],
        ),
        Node(
            nodes.logreg_learning_curve,
            inputs=[
                "samples_train",
                "samples_val",
                "samples_test",
                "vocab",
                "oracle_predictions_val",
                "oracle_predictions_test",
                "params:evaluate",
            ],
            outputs="learning_curve",
            name="logreg_learning_curve",
            tags=["evaluate", "baselines"],
        ),
        Node(
            nodes.evaluate_models,
            inputs={
                "samples_train": "samples_train",
                "samples_val": "samples_val",
                "samples_test": "samples_test",
                "vocab": "vocab",
                "ddi_adjacency": "ddi_adjacency",
                "params": "params:evaluate",
                **prediction_inputs,
            },
            outputs="metrics",
            name="evaluate_models",
            tags=["evaluate", "metrics"],
        ),
        Node(
            nodes.paired_comparisons,
            inputs={
                "samples_train": "samples_train",
                "samples_test": "samples_test",
                "vocab": "vocab",
                "student_seed_predictions": "student_seed_predictions",
                **teacher_seeds,
                "params": "params:evaluate",
                **{f"{m}_test": f"{m}_predictions_test" for m in models},
            },
            outputs="paired",
            name="paired_comparisons",
            tags=["evaluate", "metrics"],
        ),
        Node(
            nodes.make_report,
            inputs=[
                "metrics",
                "efficiency",
                "ingest_report",
                "learning_curve",
                "params:evaluate",
                "node_timings",  # written by hooks.NodeTimingHook during the run
                "paired",
            ],
            outputs=["report", "plot_prauc_by_group", "plot_ddi_tradeoff", "plot_efficiency"],
            name="make_report",
            tags=["evaluate", "report"],
        ),
    ]
    if with_efficiency:
        node_list.append(
            Node(
                nodes.measure_efficiency,
                inputs=[
                    "teacher_model",
                    "student_model",
                    "prompts_test",
                    "samples_test",
                    "params:evaluate",
                ],
                outputs="efficiency",
                name="measure_efficiency",
                tags=["evaluate", "efficiency"],
            )
        )
    return Pipeline(node_list)
