"""Teacher pipeline wiring: ``kedro run --pipeline=teacher``."""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_teacher, teacher_seed_predictions, train_teacher


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
            # teacher.n_seeds > 1: the further seeds' teachers, trained here for their val/test
            # predictions only (the paired comparisons draw the teacher's seeds like the students')
            Node(
                func=teacher_seed_predictions,
                inputs=[
                    "teacher_predictions_val",
                    "teacher_predictions_test",
                    "prompts_train",
                    "samples_train",
                    "prompts_val",
                    "samples_val",
                    "prompts_test",
                    "samples_test",
                    "vocab",
                    "params:teacher",
                    "params:seed",
                ],
                outputs="teacher_seed_predictions",
                name="train_teacher_seeds",
                tags=["teacher", "training", "inference"],
            ),
        ]
    )
