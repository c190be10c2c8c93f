"""Teacher pipeline wiring: ``kedro run --pipeline=teacher``."""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_teacher, train_teacher


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=train_teacher,
                inputs=[
                    "prompts_train",
                    "samples_train",
                    "prompts_val",
                    "samples_val",
                    "vocab",
                    "params:teacher",
                    "params:seed",
                ],
                outputs=["teacher_model", "teacher_training_history"],
                name="train_teacher",
                tags=["teacher", "training"],
            ),
            Node(
                func=predict_teacher,
                inputs=[
                    "teacher_model",
                    "prompts_val",
                    "samples_val",
                    "prompts_test",
                    "samples_test",
                    "teacher_training_history",
                    "params:teacher",
                ],
                outputs=["teacher_predictions_val", "teacher_predictions_test", "teacher_card"],
                name="predict_teacher",
                tags=["teacher", "inference"],
            ),
        ]
    )
