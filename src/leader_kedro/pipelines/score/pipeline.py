"""Score pipeline: ``score.input`` (JSON lines or parquet) -> checked records -> the champion
``leader-student`` (``leader_student_champion``, kedro-mlflow's registry dataset) ->
``score_recommendations`` + ``score_report``. Not part of ``__default__``."""

from kedro.pipeline import Node, Pipeline

from leader_kedro.pipelines.score import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.read_patient_records,
                "params:score",
                "patient_records",
                name="read_patient_records",
                tags=["score"],
            ),
            Node(
                nodes.score_patients,
                ["leader_student_champion", "patient_records", "params:score"],
                ["score_recommendations", "score_report"],
                name="score_patients",
                tags=["score", "inference"],
            ),
        ]
    )
