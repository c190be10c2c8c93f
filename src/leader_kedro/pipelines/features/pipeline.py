"""Features pipeline: ``teacher_model`` + ``teacher_card`` + ``prompts_{split}`` -> feature caches."""

from collections.abc import Callable
from typing import Any

from kedro.pipeline import Node, Pipeline

from leader_kedro.pipelines.features import nodes

OUTPUTS = {
    "train": "teacher_features_train",
    "val": "teacher_features_val",
    "test": "teacher_features_test",
}


def create_pipeline(**kwargs) -> Pipeline:
    funcs: dict[str, Callable[..., Any]] = {
        "train": nodes.extract_train,
        "val": nodes.extract_val,
        "test": nodes.extract_test,
    }
    # val and test carry the train standardisation statistics: they read the train cache
    extract_nodes = [
        Node(
            func=funcs[split],
            inputs=["teacher_model", "teacher_card", f"prompts_{split}", "params:features"]
            + ([] if split == "train" else [OUTPUTS["train"]]),
            outputs=output,
            name=f"extract_teacher_features_{split}",
            tags=["features"],
        )
        for split, output in OUTPUTS.items()
    ]
    report = Node(
        func=nodes.report_features,
        inputs=[*OUTPUTS.values(), "teacher_card"],
        outputs="teacher_features_report",
        name="report_teacher_features",
        tags=["features", "report"],
    )
    return Pipeline([*extract_nodes, report])
