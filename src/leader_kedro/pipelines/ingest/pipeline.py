"""Kedro wiring of the ingest stage (no heavy imports here)."""

from kedro.pipeline import Node, Pipeline

from leader_kedro.pipelines.ingest import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.prepare_raw,
                inputs=[
                    "params:source",
                    "params:raw_dir",
                    "params:aux_dir",
                    "params:synthetic",
                    "params:ingest",
                    "params:seed",
                ],
                outputs="raw_manifest",
                name="prepare_raw",
            ),
            Node(
                nodes.build_cohort,
                inputs=["raw_manifest", "params:ingest", "params:seed"],
                outputs=["visits", "vocab", "code_names", "ddi_adjacency", "cohort_report"],
                name="build_cohort",
            ),
            Node(
                nodes.make_splits,
                inputs=["visits", "params:ingest", "params:seed"],
                outputs=[
                    "samples_train",
                    "samples_val",
                    "samples_test",
                    "split_ids",
                    "split_report",
                ],
                name="make_splits",
            ),
            Node(
                nodes.oracle_predictions,
                inputs=["raw_manifest", "samples_val", "samples_test", "vocab"],
                outputs=["oracle_predictions_val", "oracle_predictions_test"],
                name="oracle_predictions",
            ),
            Node(
                nodes.write_ingest_report,
                inputs=[
                    "raw_manifest",
                    "cohort_report",
                    "split_report",
                    "params:ingest",
                    "params:seed",
                ],
                outputs="ingest_report",
                name="write_ingest_report",
            ),
        ],
        tags=["ingest"],
    )
