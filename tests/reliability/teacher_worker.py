"""Runs the teacher training in its own process, to be killed with SIGKILL by the test.

``python teacher_worker.py <spec.json>``: the spec names the data folder (parquet + medications),
the teacher parameters, the seed, and where to stop: ``block: "epoch"`` blocks after the first
step of epoch 2 (mid-epoch, after checkpoint 1 is complete), ``block: "checkpoint"`` blocks in
the middle of writing the checkpoint of epoch 2 (its weights are written, its optimizer state,
trainer state and completeness marker are not). On reaching the point it writes the ``ready``
file and waits to be killed; the test polls that file, so no timing is guessed.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pandas as pd


def _block(ready: Path) -> None:
    ready.write_text("ready")
    threading.Event().wait(300)  # the test kills this process now
    sys.exit(3)  # never killed: fail loudly


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    data, ready, steps = Path(spec["data"]), Path(spec["ready"]), int(spec["steps_per_epoch"])
    from transformers import TrainerCallback

    from leader_kedro.teacher import training
    from leader_kedro.teacher.trainer import TeacherTrainer

    callbacks = []
    if spec["block"] == "epoch":

        class BlockMidEpoch(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == steps + 1:
                    _block(ready)

        callbacks.append(BlockMidEpoch())
    else:
        original = TeacherTrainer._save_optimizer_and_scheduler

        def save_then_block(self, output_dir):
            if self.state.global_step == 2 * steps:
                _block(ready)
            return original(self, output_dir)

        TeacherTrainer._save_optimizer_and_scheduler = save_then_block

    training.train_teacher(
        pd.read_parquet(data / "prompts_train.parquet"),
        pd.read_parquet(data / "samples_train.parquet"),
        pd.read_parquet(data / "prompts_val.parquet"),
        pd.read_parquet(data / "samples_val.parquet"),
        json.loads((data / "medications.json").read_text()),
        spec["params"],
        seed=int(spec["seed"]),
        callbacks=callbacks,
    )
    sys.exit(4)  # the run was meant to be killed before the end


if __name__ == "__main__":
    main(sys.argv[1])
