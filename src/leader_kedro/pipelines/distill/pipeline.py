"""Distill pipeline: choose alpha / beta on val (off by default), train LEADER(S) (+ no-KD / no-align
ablations and the shuffled-features control) over seeds, predict, evaluate, register."""

from kedro.pipeline import Node, Pipeline

from leader_kedro.contracts import STUDENT_VARIANTS
from leader_kedro.pipelines.distill import nodes

TRAIN_INPUTS = [
    "samples_train",
    "samples_val",
    "samples_test",
    "vocab",
    "code_names",
    "teacher_features_train",
    "teacher_card",
    "prompts_train",
    "kd_tuning",
    "params:distill",
]
TUNE_INPUTS = [
    "samples_train",
    "samples_val",
    "vocab",
    "code_names",
    "teacher_features_train",
    "teacher_card",
    "prompts_train",
    "params:distill",
]
# the same student with one part (distillation, alignment) switched off, or distilled from the
# teacher features shuffled across the train samples (the control)
ABLATIONS = tuple(v for v in STUDENT_VARIANTS if v != "main")
TRAIN_OUTPUTS = {
    "student_model": "student_model",
    "student_history_main": "student_history_main",
    **{
        name: name
        for variant in ABLATIONS
        for name in (
            f"{STUDENT_VARIANTS[variant]}_predictions_val",
            f"{STUDENT_VARIANTS[variant]}_predictions_test",
            f"student_history_{variant}",
        )
    },
    "student_seed_predictions": "student_seed_predictions",
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            # alpha x beta grid of the main student scored on val PRAUC (distill.tuning; off by
            # default: the configured pair, nothing trained). Never reads the test split.
            Node(
                nodes.tune_loss_weights,
                TUNE_INPUTS,
                "kd_tuning",
                name="tune_loss_weights",
                tags=["distill", "training", "tuning"],
            ),
            # one node for every (variant, seed) student: they train side by side in
            # distill.training.workers processes, which the sequential runner could not do
            Node(
                nodes.train_students,
                TRAIN_INPUTS,
                TRAIN_OUTPUTS,
                name="train_students",
                tags=["distill", "training"],
            ),
            Node(
                nodes.predict_student,
                ["student_model", "samples_val", "samples_test", "params:distill"],
                ["student_predictions_val", "student_predictions_test"],
                name="predict_student",
                tags=["distill", "inference"],
            ),
            Node(
                nodes.evaluate_students,
                {
                    "samples_test": "samples_test",
                    "vocab": "vocab",
                    "teacher_predictions_test": "teacher_predictions_test",
                    "student_seed_predictions": "student_seed_predictions",
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
                [
                    "student_model",
                    "samples_val",
                    "ddi_adjacency",
                    "distill_metrics",
                    "params:distill",
                ],
                "student_registration",
                name="register_student",
                tags=["distill", "registry"],
            ),
        ]
    )
