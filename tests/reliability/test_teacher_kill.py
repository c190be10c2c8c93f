"""Fault 1: SIGKILL the teacher training, mid-epoch and mid-checkpoint; the next run resumes.

The training runs in a subprocess on a tiny random BERT (tests/reliability/teacher_worker.py),
which reaches a chosen point, says so through a file, and is SIGKILLed there by the test. The next
run (same configuration, ``resume_from_checkpoint: auto``) must resume from the last *complete*
checkpoint and end with the same val PRAUC, epoch by epoch, as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leader_kedro.teacher import training as TT

WORKER = Path(__file__).with_name("teacher_worker.py")
SEED = 11
BATCH = 8
EPOCHS = 2
#: resumed vs uninterrupted run, val PRAUC of every epoch (measured: identical on CPU)
PRAUC_TOLERANCE = 1e-4


def _params(backbone: str, checkpoint_dir: Path) -> dict:
    return {
        "backbone": backbone,
        "num_epochs": EPOCHS,
        "per_device_batch_size": BATCH,
        "learning_rate": 5e-3,
        "head_learning_rate": 2e-2,
        "max_length": 64,
        "checkpoint_dir": str(checkpoint_dir),
        "disable_tqdm": True,
        "lora": {"r": 4, "alpha": 8, "layers_to_transform": None},
        "logging_steps": 1,
        "early_stopping_patience": 10,
        "save_total_limit": 1,
        "resume_from_checkpoint": "auto",
    }


def _data(cohort: dict) -> tuple:
    return (
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        cohort["vocab"]["medication"],
    )


@pytest.fixture(scope="module")
def reference(tiny_bert, tiny_cohort, tmp_path_factory):
    """The uninterrupted run: val PRAUC by epoch."""
    ckpt = tmp_path_factory.mktemp("reference")
    _, history = TT.train_teacher(*_data(tiny_cohort), _params(tiny_bert, ckpt), seed=SEED)
    assert [row["epoch"] for row in history["history"]] == list(range(1, EPOCHS + 1))
    return history


def _kill_at(block: str, tiny_bert, tiny_cohort, tmp_path: Path) -> Path:
    """Run the training in a subprocess until ``block``, SIGKILL it; returns its checkpoint dir."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("prompts_train", "samples_train", "prompts_val", "samples_val"):
        tiny_cohort[name].to_parquet(data / f"{name}.parquet")
    (data / "medications.json").write_text(json.dumps(tiny_cohort["vocab"]["medication"]))
    ready = tmp_path / "ready"
    ckpt = tmp_path / "ckpt"
    spec = {
        "data": str(data),
        "ready": str(ready),
        "block": block,
        "steps_per_epoch": int(np.ceil(len(tiny_cohort["prompts_train"]) / BATCH)),
        "params": _params(tiny_bert, ckpt),
        "seed": SEED,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path / "spec.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"the training ended before {block!r}: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the training never reached {block!r}")
            time.sleep(0.05)  # polling the ready file, not guessing a duration
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    (run_dir,) = [p for p in ckpt.iterdir() if p.is_dir()]
    return run_dir


def _assert_same_as_reference(history: dict, reference: dict) -> None:
    got = [row["val_prauc"] for row in history["history"]]
    want = [row["val_prauc"] for row in reference["history"]]
    assert len(got) == len(want) == EPOCHS
    np.testing.assert_allclose(got, want, rtol=0, atol=PRAUC_TOLERANCE)
    assert history["summary"]["best_val_prauc"] == pytest.approx(
        reference["summary"]["best_val_prauc"], abs=PRAUC_TOLERANCE
    )
    print(f"val PRAUC by epoch: uninterrupted {want}, resumed {got}")


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(
    tiny_bert, tiny_cohort, tmp_path, reference
):
    steps = int(np.ceil(len(tiny_cohort["prompts_train"]) / BATCH))
    run_dir = _kill_at("epoch", tiny_bert, tiny_cohort, tmp_path)
    first = run_dir / f"checkpoint-{steps}"
    assert TT.checkpoint_is_complete(first)
    assert not (run_dir / TT.DONE_FILE).exists(), "a killed run is not recorded as finished"

    _, history = TT.train_teacher(
        *_data(tiny_cohort), _params(tiny_bert, tmp_path / "ckpt"), seed=SEED
    )
    assert history["summary"]["resumed_from"] == str(first)
    assert history["summary"]["global_step"] == EPOCHS * steps
    _assert_same_as_reference(history, reference)


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(
    tiny_bert, tiny_cohort, tmp_path, reference
):
    steps = int(np.ceil(len(tiny_cohort["prompts_train"]) / BATCH))
    run_dir = _kill_at("checkpoint", tiny_bert, tiny_cohort, tmp_path)
    half = run_dir / f"checkpoint-{2 * steps}"
    assert (half / TT.TRAINABLE_FILE).is_file(), "killed after the weights, before the rest"
    assert not TT.checkpoint_is_complete(half)
    assert TT.checkpoint_is_complete(run_dir / f"checkpoint-{steps}"), (
        "the previous checkpoint must survive until the new one is complete (rotation after "
        "the marker, save_total_limit=1)"
    )

    _, history = TT.train_teacher(
        *_data(tiny_cohort), _params(tiny_bert, tmp_path / "ckpt"), seed=SEED
    )
    assert history["summary"]["resumed_from"] == str(run_dir / f"checkpoint-{steps}")
    _assert_same_as_reference(history, reference)
    assert TT.checkpoint_is_complete(history["summary"]["best_checkpoint"])
    assert all(TT.checkpoint_is_complete(p) for p in run_dir.glob("checkpoint-*"))


def test_an_explicit_incomplete_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / TT.TRAINABLE_FILE).write_bytes(b"x" * 10)
    assert TT.last_complete_checkpoint(tmp_path) is None and not folder.exists()
    folder.mkdir()
    (folder / TT.TRAINABLE_FILE).write_bytes(b"x" * 10)
    with pytest.raises(TT.TeacherConfigError, match="incomplete"):
        TT._resolve_run(
            TT.resolve_params(
                {"checkpoint_dir": str(tmp_path / "c"), "resume_from_checkpoint": str(folder)}
            ),
            "sig",
        )
    TT.mark_complete(folder, 5)
    assert TT.checkpoint_is_complete(folder)
    (folder / TT.TRAINABLE_FILE).write_bytes(b"x" * 4)  # truncated after the marker
    assert not TT.checkpoint_is_complete(folder)
