"""Distill pipeline: train LEADER(S) (+ no-KD / no-align ablations), predict, evaluate, register."""

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from leader_kedro.contracts import STUDENT_VARIANTS
from leader_kedro.pipelines.distill import nodes

TRAIN_INPUTS = [
    "samples_train",
    "samples_val",
    "vocab",
    "code_names",
    "teacher_features_train",
    "teacher_card",
    "prompts_train",
    "params:distill",
]
# the same student with one part (distillation, alignment) switched off
ABLATIONS = tuple(v for v in STUDENT_VARIANTS if v != "main")
ABLATION_INPUTS = [
    "samples_train",
    "samples_val",
    "samples_test",
    "vocab",
    "code_names",
    "teacher_features_train",
    "teacher_card",
    "prompts_train",
    "params:distill",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.train_student_main,
                TRAIN_INPUTS,
                ["student_model", "student_history_main"],
                name="train_student",
                tags=["distill", "training"],
            ),
            Node(
                nodes.predict_student,
                ["student_model", "samples_val", "samples_test", "params:distill"],
                ["student_predictions_val", "student_predictions_test"],
                name="predict_student",
                tags=["distill", "inference"],
            ),
            *[
                Node(
                    update_wrapper(partial(nodes.train_ablation, variant), nodes.train_ablation),
                    ABLATION_INPUTS,
                    [
                        f"student_{variant}_predictions_val",
                        f"student_{variant}_predictions_test",
                        f"student_history_{variant}",
                    ],
                    name=f"train_student_{variant}",
                    tags=["distill", "training", "ablation"],
                )
                for variant in ABLATIONS
            ],
            Node(
                nodes.evaluate_students,
                {
                    "samples_test": "samples_test",
                    "vocab": "vocab",
                    "teacher_predictions_test": "teacher_predictions_test",
                    "params": "params:distill",
                    **{
                        f"{model}_predictions_test": f"{model}_predictions_test"
                        for model in STUDENT_VARIANTS.values()
                    },
                    **{
                        f"{model}_history": f"student_history_{variant}"
                        for variant, model in STUDENT_VARIANTS.items()
                    },
                },
                ["distill_metrics", "student_training_history"],
                name="evaluate_students",
                tags=["distill", "evaluation"],
            ),
            Node(
                nodes.register_student,
                ["student_model", "samples_test", "distill_metrics", "params:distill"],
                "student_registration",
                name="register_student",
                tags=["distill", "registry"],
            ),
        ]
    )
