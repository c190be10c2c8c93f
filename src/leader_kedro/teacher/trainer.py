"""The Hugging Face ``Trainer`` subclass and callback of the teacher fine-tuning.

Imports torch and transformers at module level: :mod:`leader_kedro.teacher.training` imports this
module only inside ``train_teacher``, so importing ``teacher_training`` stays light.
"""

from __future__ import annotations

import logging
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback

from leader_kedro import tracking
from leader_kedro.teacher.training import TRAINABLE_FILE, mark_complete

logger = logging.getLogger(__name__)


class TeacherTrainer(Trainer):
    """Saves/loads only the trainable tensors; head and LoRA get separate learning rates."""

    head_learning_rate: float | None = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            head, lora = [], []
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    (head if name.startswith("head.") else lora).append(param)
            groups = [
                {
                    "params": lora,
                    "lr": self.args.learning_rate,
                    "weight_decay": self.args.weight_decay,
                },
                {
                    "params": head,
                    "lr": self.head_learning_rate or self.args.learning_rate,
                    "weight_decay": 0.0,
                },
            ]
            self.optimizer = torch.optim.AdamW(
                groups, lr=self.args.learning_rate, betas=(0.9, 0.999), eps=1e-8
            )
        return self.optimizer

    def _save_checkpoint(self, model, trial):
        """HF's checkpoint, then a completeness marker, then the rotation of old checkpoints.

        The marker (:data:`~leader_kedro.teacher.training.COMPLETE_FILE`, written atomically) is
        the last file of a checkpoint: resuming takes the newest checkpoint that has it, so a run
        killed while writing one resumes from the previous one. Old checkpoints are rotated only
        after the marker, so a kill never leaves a run without a complete checkpoint.
        """
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            mark_complete(folder, self.state.global_step)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            trainable = model.trainable_state_dict()
        else:  # FSDP / DeepSpeed: the Trainer gathered whole tensors; keep the trainable ones
            names = {
                n.replace("_fsdp_wrapped_module.", "")
                for n, p in model.named_parameters()
                if p.requires_grad
            }
            trainable = {k: v for k, v in state_dict.items() if k in names}
        tensors = {k: v.float().cpu().contiguous() for k, v in trainable.items()}
        save_file(tensors, os.path.join(output_dir, TRAINABLE_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_trainable(self, folder: str) -> None:
        file = os.path.join(folder, TRAINABLE_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"checkpoint {folder} has no {TRAINABLE_FILE}: not a teacher checkpoint"
            )
        model = self.accelerator.unwrap_model(self.model)
        state = load_file(file)
        current = model.state_dict()
        missing = [k for k in state if k not in current]
        if missing:
            raise ValueError(
                f"checkpoint {folder} does not match the model: unknown keys {missing[:3]}"
            )
        with torch.no_grad():
            for k, v in state.items():
                current[k].copy_(v.to(current[k].dtype))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_trainable(resume_from_checkpoint)

    def _load_best_model(self):
        logger.info(
            "Loading best teacher checkpoint %s (val prauc %.4f)",
            self.state.best_model_checkpoint,
            self.state.best_metric or float("nan"),
        )
        self._load_trainable(self.state.best_model_checkpoint)


class MlflowMetricsCallback(TrainerCallback):
    """Forward Trainer logs to the kedro-mlflow run (no-op without a run)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            numeric = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            tracking.log_metrics(numeric, step=state.global_step, prefix="teacher.")
