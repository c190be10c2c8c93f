"""Prompts pipeline: ``samples_{split}`` + ``code_names`` -> ``prompts_{split}`` + length report."""

from kedro.pipeline import Node, Pipeline

from leader_kedro.pipelines.prompts import nodes

SPLITS = ("train", "val", "test")


def create_pipeline(**kwargs) -> Pipeline:
    builders = {
        "train": nodes.make_prompts_train,
        "val": nodes.make_prompts_val,
        "test": nodes.make_prompts_test,
    }
    split_nodes = [
        Node(
            func=builders[split],
            inputs=[
                f"samples_{split}",
                "code_names",
                "params:prompts",
                "params:teacher.backbone",
                "params:teacher.max_length",
            ],
            outputs=[f"prompts_{split}", f"prompt_stats_{split}"],
            name=f"make_prompts_{split}",
            tags=["prompts"],
        )
        for split in SPLITS
    ]
    report = Node(
        func=nodes.report_prompt_lengths,
        inputs=[f"prompts_{s}" for s in SPLITS]
        + [f"prompt_stats_{s}" for s in SPLITS]
        + ["params:prompts"],
        outputs="prompt_length_report",
        name="report_prompt_lengths",
        tags=["prompts", "report"],
    )
    return Pipeline([*split_nodes, report])
