"""DamagedArtifactHook on its own: which pending load failed, and what it leaves alone."""

from __future__ import annotations

import pytest
from kedro.io import DatasetError

from leader_kedro.contracts import DamagedArtifactError, MissingArtifactError
from leader_kedro.hooks import DamagedArtifactHook, root_cause


def _failed_load(*names: str) -> DamagedArtifactHook:
    hook = DamagedArtifactHook()
    hook.before_pipeline_run(None, None, None)
    for name in names:
        hook.before_dataset_loaded(name, None)
    return hook


def test_the_pending_load_named_by_the_error_is_the_damaged_one():
    hook = _failed_load("samples_train", "vocab")  # two loads in flight (async loading)
    try:
        raise ValueError("Expecting value: line 1 column 1 (char 0)")
    except ValueError as cause:
        error = DatasetError("vocab: Failed while loading data from dataset JSONDataset(...)")
        error.__cause__ = cause
    with pytest.raises(DamagedArtifactError) as info:
        hook.on_pipeline_error(error, {}, None, None)
    message = str(info.value)
    assert message.startswith("Artifact 'vocab' ")
    assert "ValueError: Expecting value" in message and "`kedro run --pipeline=ingest`" in message


def test_finished_loads_and_the_projects_own_errors_are_left_alone():
    hook = _failed_load("vocab")
    hook.after_dataset_loaded("vocab", {}, None)
    hook.on_pipeline_error(RuntimeError("a node failed"), {}, None, None)  # no load pending
    hook = _failed_load("vocab")
    hook.on_pipeline_error(MissingArtifactError("already one clear message"), {}, None, None)


def test_root_cause_is_one_short_line():
    try:
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("line one\nline two " + "y" * 500) from None
    except ValueError as exc:
        text = root_cause(exc)
    assert text.startswith("ValueError: line one line two") and "\n" not in text
    assert len(text) <= len("ValueError: ") + 300
