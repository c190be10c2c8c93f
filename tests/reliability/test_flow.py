"""Faults 2 and 4 through the real pipeline: determinism, leakage, damaged artifacts.

The ``flow`` fixture (conftest.py) runs the whole default flow twice on conf/test with a tiny
random BERT teacher, in two throw-away project copies, and keeps what the nodes that read the test
split received and returned.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reliability_kit import flow_params, new_project, run_session

from leader_kedro.contracts import DamagedArtifactError

# --------------------------------------------------------------------------- helpers
#: keys whose values are clocks, not results
TIMING = re.compile(r"seconds|wall|_time|time_|per_second|created_at|s_per_step|_s$|timestamp")


def _plain(value):
    """A comparable form: frames, arrays and model weights as numpy, dicts without timings."""
    if isinstance(value, pd.DataFrame):
        return value.reset_index(drop=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    module = getattr(value, "module", None) or getattr(value, "model", None)
    if module is not None and hasattr(module, "state_dict"):
        return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _assert_same(a, b, where: str) -> None:
    a, b = _plain(a), _plain(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys differ"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _reporting(project: Path, name: str):
    """A reporting JSON, with the project's own path (it differs between copies) made generic."""
    text = (project / "data" / "08_reporting" / name).read_text()
    return json.loads(text.replace(str(project), "<project>"))


# --------------------------------------------------------------------------- determinism
def test_two_runs_with_the_same_seed_give_identical_metrics(flow):
    a, b = flow["a"], flow["b"]
    for name in ("metrics.json", "distill_metrics.json", "ingest_report.json"):
        _assert_same(_reporting(a, name), _reporting(b, name), name)
    card_a, card_b = _reporting(a, "teacher_card.json"), _reporting(b, "teacher_card.json")
    _assert_same(card_a["metrics"], card_b["metrics"], "teacher_card.metrics")
    assert card_a["fingerprint"] == card_b["fingerprint"], "the same seed trains the same teacher"
    outputs = sorted((a / "data" / "07_model_output").glob("*.parquet"))
    assert len(outputs) >= 10
    for path in outputs:
        _assert_same(pd.read_parquet(path), pd.read_parquet(b / path.relative_to(a)), path.name)


# --------------------------------------------------------------------------- leakage
def _patients(project: Path) -> dict[str, set]:
    folder = project / "data" / "05_model_input"
    return {
        s: set(pd.read_parquet(folder / f"samples_{s}.parquet")["subject_id"])
        for s in ("train", "val", "test")
    }


def test_no_patient_is_in_two_splits(flow):
    patients = _patients(flow["a"])
    assert all(patients.values())
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_training_nodes_see_no_test_patient(flow):
    """Every node tagged ``training`` gets train/val data only, whatever else it receives."""
    runs = flow["spy"].runs
    test = _patients(flow["a"])["test"]
    test_ids = set(pd.read_parquet(flow["a"] / "data/05_model_input/samples_test.parquet")["sample_id"])  # fmt: skip
    training = {name: r for name, r in runs.items() if "training" in r["node"].tags}
    assert {"train_teacher"} <= set(training) and len(training) >= 2
    for name, run in training.items():
        for dataset, value in run["inputs"].items():
            if dataset.endswith("_test"):
                continue  # read for predicting; test_test_split_content_never_changes_training
            if isinstance(value, pd.DataFrame):
                if "subject_id" in value:
                    assert not set(value["subject_id"]) & test, f"{name} <- {dataset}"
                if "sample_id" in value:
                    assert not set(value["sample_id"].astype(str)) & test_ids, (
                        f"{name} <- {dataset}"
                    )
            elif isinstance(value, dict) and "sample_ids" in value:  # a feature cache
                assert not set(value["sample_ids"]) & test_ids, f"{name} <- {dataset}"
    teacher_inputs = set(training["train_teacher"]["inputs"])
    assert not any(d.endswith("_test") for d in teacher_inputs), teacher_inputs


#: outputs that report on the test split by design, compared on their val-only part (None: skip)
TEST_REPORTS = {
    "teacher_card": lambda card: {
        **{k: v for k, v in card.items() if k != "metrics"},
        "val": card["metrics"]["val"],
    },  # fmt: skip
    "metrics": lambda m: m["thresholds"],  # thresholds are tuned on val
    "student_seed_predictions": lambda f: f[f["split"] != "test"],
    "teacher_seed_predictions": lambda f: f[f["split"] != "test"],
    "learning_curve": None,
    "paired": None,  # paired bootstrap over the test patients: a test report by design
    "prompt_length_report": None,
    "teacher_features_report": None,
    "efficiency": None,
    "distill_metrics": None,
    "student_training_history": None,
    "student_registration": None,
}


def _scramble(value):
    """The test rows' content moved one row down (ids stay): labels, prompts, probabilities."""
    if not isinstance(value, pd.DataFrame) or len(value) < 2:
        return value
    out = value.copy()
    for col in out.columns:
        if col not in ("sample_id", "subject_id", "hadm_id"):
            out[col] = np.roll(out[col].to_numpy(), 1)
    return out


def test_test_split_content_never_changes_training_or_thresholds(flow):
    """Re-run every node that reads the test split with the test rows' content scrambled: its
    trained models, val predictions, histories and tuned thresholds must not change. If anything
    from test reached training or threshold tuning, they would."""
    checked = []
    for name, run in flow["spy"].runs.items():
        node = run["node"]
        compared = {
            out: TEST_REPORTS.get(out, lambda v: v)
            for out in node.outputs
            if not out.endswith("_test") and TEST_REPORTS.get(out, 0) is not None
        }
        if not compared or not any(d.endswith("_test") for d in node.inputs):
            continue
        scrambled = {
            d: _scramble(v) if d.endswith("_test") else v for d, v in run["inputs"].items()
        }
        again = node.run(scrambled)
        for out, view in compared.items():
            _assert_same(view(run["outputs"][out]), view(again[out]), f"{name} -> {out}")
        checked.append(name)
    assert {"train_students", "predict_teacher", "evaluate_models", "baseline_logreg"} <= set(
        checked
    ), checked


# --------------------------------------------------------------------------- damaged artifacts
#: artifact -> (file inside its latest version, a node that reads it (namespaced by its stage),
#: the stage that makes it)
ARTIFACTS = {
    "teacher_features": (
        "data/04_feature/teacher_features_train.safetensors/*/teacher_features_train.safetensors",
        "distill.train_students",
        "teacher_features_train",
        "features",
    ),  # fmt: skip
    "student": (
        "data/06_models/student_model/*/student_model/student.safetensors",
        "distill.predict_student",
        "student_model",
        "distill",
    ),  # fmt: skip
    "teacher_adapter": (
        "data/06_models/teacher_model/*/teacher_model/adapter/adapter_model.safetensors",
        "features.extract_teacher_features_train",
        "teacher_model",
        "teacher",
    ),  # fmt: skip
    "teacher_head": (
        "data/06_models/teacher_model/*/teacher_model/head.safetensors",
        "features.extract_teacher_features_train",
        "teacher_model",
        "teacher",
    ),  # fmt: skip
    "vocab": ("data/03_primary/vocab.json", "evaluate.baseline_mostfreq", "vocab", "ingest"),
    "samples": (
        "data/05_model_input/samples_train.parquet",
        "evaluate.baseline_mostfreq",
        "samples_train",
        "ingest",
    ),  # fmt: skip
    "predictions": (
        "data/07_model_output/teacher_predictions_test.parquet",
        "evaluate.evaluate_models",
        "teacher_predictions_test",
        "teacher",
    ),  # fmt: skip
}
DAMAGES = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbage": lambda b: np.random.default_rng(0).bytes(max(len(b), 64)),
}


def _artifact_file(project: Path, pattern: str) -> Path:
    found = sorted(project.glob(pattern))
    assert found, pattern
    return found[-1]  # the latest version


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("artifact", sorted(ARTIFACTS))
def test_a_damaged_artifact_stops_the_run_with_one_message(flow, artifact, damage):
    pattern, node, dataset, stage = ARTIFACTS[artifact]
    project = flow["a"]
    path = _artifact_file(project, pattern)
    original = path.read_bytes()
    path.write_bytes(DAMAGES[damage](original))
    try:
        with pytest.raises(DamagedArtifactError) as info:
            run_session(project, flow_params(flow["tiny_bert"]), node_names=[node])
    finally:
        path.write_bytes(original)
    message = str(info.value)
    print(f"{artifact:17s} {damage:9s} -> {message}")
    assert "\n" not in message
    assert f"'{dataset}'" in message and f"`kedro run --pipeline={stage}`" in message


def test_a_killed_save_leaves_the_previous_artifact_whole(tmp_path):
    """Writes go to a temporary name and are renamed: a save that dies half-way leaves the
    artifact as it was, and its debris is never read under the artifact's name."""
    from leader_kedro.datasets._atomic import write_bytes_atomic, write_dir_atomic

    target = tmp_path / "model"

    def write(folder: Path, fail: bool = False) -> None:
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"new" * 100)
        if fail:
            raise KeyboardInterrupt("killed half-way")
        (folder / "config.json").write_text("{}")

    write_dir_atomic(target, write)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        write_dir_atomic(target, lambda f: write(f, fail=True))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    file = tmp_path / "features.safetensors"
    write_bytes_atomic(file, b"whole")
    write_bytes_atomic(file, b"replaced")
    assert file.read_bytes() == b"replaced" and len(list(tmp_path.iterdir())) == 2


# --------------------------------------------------------------------------- the CLI
def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", "test", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


#: stderr of a failed `kedro run` on a known error: the message and where the traceback is
MAX_STDERR_LINES = 4


def _error_lines(stderr: str) -> list[str]:
    # mlflow prints its own two lines when it creates a fresh mlflow.db
    return [line for line in stderr.splitlines() if "mlflow.store.db.utils" not in line]


def test_cli_prints_one_message_for_a_missing_raw_file(tmp_path):
    project = new_project(tmp_path / "p")
    empty = tmp_path / "raw"
    empty.mkdir()
    done = _kedro(
        project, "--pipeline=ingest", f"--params=source=mimic3,raw_dir={empty},aux_dir={empty}"
    )
    lines = _error_lines(done.stderr)
    print(f"missing raw file: {len(done.stderr.splitlines())} stderr lines: {lines}")
    assert done.returncode == 1
    assert len(lines) <= MAX_STDERR_LINES, done.stderr
    assert lines[0].startswith("Error: Missing file") and "PATIENTS" in lines[0]
    assert "logs/info.log" in lines[-1]
    log = (project / "logs" / "info.log").read_text()
    assert "Traceback (most recent call last)" in log and "IngestInputError" in log


def test_cli_prints_one_message_for_a_damaged_artifact(flow, tmp_path):
    project = new_project(tmp_path / "p")
    shutil.copytree(flow["a"] / "data", project / "data", dirs_exist_ok=True)
    (project / "data" / "03_primary" / "vocab.json").write_text('{"medication": [')
    done = _kedro(project, "--nodes=evaluate.baseline_mostfreq")
    lines = _error_lines(done.stderr)
    print(f"damaged vocab: {len(done.stderr.splitlines())} stderr lines: {lines}")
    assert done.returncode == 1
    assert len(lines) <= MAX_STDERR_LINES, done.stderr
    assert "'vocab'" in lines[0] and "`kedro run --pipeline=ingest`" in lines[0]
    assert "JSONDecodeError" in (project / "logs" / "info.log").read_text()
