"""The registered ``leader-student``: champion rule, made-up input example, code that travels.

The champion-rule tests use a throw-away sqlite registry with dummy versions (no model needed);
the loading test uses the model the default flow registered (``tracked_flow``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import mlflow

from leader_kedro.student.registry import (
    CHAMPION_ALIAS,
    champion_decision,
    current_champion,
    example_patients,
    promote_if_better,
    requirements,
)
from leader_kedro.student.service import record_problems


def test_champion_decision_needs_a_strictly_better_val_prauc():
    assert champion_decision(0.5, None)[0] is True
    assert champion_decision(0.6, {"version": 1, "val_prauc": 0.5}) == (
        True,
        "val PRAUC 0.6000 beats champion v1 (0.5000)",
    )
    assert champion_decision(0.5, {"version": 1, "val_prauc": 0.5})[0] is False  # a tie keeps it
    assert champion_decision(0.4, {"version": 1, "val_prauc": 0.5})[0] is False
    assert champion_decision(None, None)[0] is False
    assert champion_decision(0.1, {"version": 3, "val_prauc": None})[0] is True


def test_the_alias_moves_only_to_a_better_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("leader-student")
    decisions = []
    for number, prauc in enumerate((0.50, 0.45, 0.50, 0.61, 0.60), start=1):
        version = client.create_model_version("leader-student", source=str(tmp_path), run_id=None)
        assert int(version.version) == number
        client.set_model_version_tag("leader-student", str(number), "val_prauc", str(prauc))
        decisions.append(promote_if_better(client, "leader-student", number, prauc, uri))
    assert [d["champion"] for d in decisions] == [True, False, False, True, False]
    assert current_champion(client, "leader-student") == {"version": 4, "val_prauc": 0.61}
    assert int(client.get_model_version_by_alias("leader-student", CHAMPION_ALIAS).version) == 4
    tags = client.get_model_version("leader-student", "5").tags
    assert tags["champion_decision"] == "val PRAUC 0.6000 does not beat champion v4 (0.6100)"


def test_the_input_example_is_made_up_from_the_vocabulary():
    vocab = {
        "diagnosis": [f"D{i}" for i in range(30)],
        "procedure": [f"P{i}" for i in range(10)],
        "medication": [f"M{i}" for i in range(12)],
        "profile": {"gender": ["unknown", "F", "M"], "insurance": ["unknown", "Private"]},
    }
    first, returning = example_patients(vocab)
    assert example_patients(vocab) == [first, returning]  # deterministic
    assert first["medications"] == [] and len(first["diagnoses"]) == 1
    assert len(returning["diagnoses"]) == 2 and len(returning["medications"]) == 1
    for patient in (first, returning):
        assert record_problems(patient) == []
        codes = {c for visit in patient["diagnoses"] for c in visit}
        assert codes <= set(vocab["diagnosis"])
        assert {c for v in patient["medications"] for c in v} <= set(vocab["medication"])
        assert patient["gender"] in {"F", "M"}  # never the placeholder "unknown"


def test_requirements_are_installable_from_an_index():
    pins = requirements()
    assert all("==" in p and "+" not in p for p in pins)
    assert not any(p.startswith("leader") for p in pins)  # the code travels with the model


def test_the_champion_loads_where_the_project_is_not_importable(tracked_flow, tmp_path):
    """``python -S`` skips site-packages' .pth files, so the editable install of leader_kedro is
    gone from the import path; the model must bring its own code (code_paths)."""
    db = tracked_flow / "mlflow.db"
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})  # site-packages without .pth files
        assert importlib.util.find_spec("leader_kedro") is None, "the project is importable"
        import gc, mlflow
        mlflow.set_tracking_uri({f"sqlite:///{db}"!r})
        assert gc.get_freeze_count() == 0
        model = mlflow.pyfunc.load_model("models:/leader-student@champion")
        print("FROZEN", gc.get_freeze_count())
        out = model.predict([{{"diagnoses": [["4019", "42731"]], "procedures": [["3893"]],
                               "medications": [], "age": 70.0, "top_k": 3}}])
        import leader_kedro
        print("FROM", leader_kedro.__file__)
        print("RESULT", json.dumps(out[0].model_dump()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    source = next(x for x in done.stdout.splitlines() if x.startswith("FROM "))
    assert "/code/leader_kedro/" in source and str(tracked_flow) in source, source
    answer = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert [r["rank"] for r in answer["recommendations"]] == [1, 2, 3]
    # loading moved what the server holds for good out of the garbage collector's scans
    frozen = int(next(x for x in done.stdout.splitlines() if x.startswith("FROZEN "))[7:])
    assert frozen > 10_000


def test_the_registered_version_is_documented_and_traceable(tracked_flow, monkeypatch):
    from mlflow.tracking._model_registry import utils as registry_utils

    db = tracked_flow / "mlflow.db"
    # read from this store only (monkeypatch restores the registry URI; set_registry_uri would
    # leak an environment variable into later tests)
    monkeypatch.setattr(registry_utils, "_registry_uri", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    version = client.get_model_version_by_alias("leader-student", CHAMPION_ALIAS)
    tags = version.tags
    assert float(tags["val_prauc"]) > 0 and tags["champion_decision"]
    # the feature cache it was distilled from, by path and fingerprint, and the teacher's
    assert tags["lineage.teacher_features_train.path"].endswith(".safetensors")
    assert len(tags["lineage.teacher_features_train.fingerprint"]) == 64
    assert tags["lineage.teacher_features_train.teacher_fingerprint"]
    run = client.get_run(version.run_id)
    assert (
        run.data.tags["lineage.teacher_features_train.fingerprint"]
        == (tags["lineage.teacher_features_train.fingerprint"])
    )
    local = mlflow.artifacts.download_artifacts(f"models:/leader-student/{version.version}")
    model_dir = Path(local)
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "signature:" in mlmodel and "code: code" in mlmodel
    assert (model_dir / "code" / "leader_kedro" / "student" / "service.py").is_file()
    assert "leader_kedro" not in (model_dir / "requirements.txt").read_text()
    example = json.loads((model_dir / "input_example.json").read_text())
    vocab = json.loads(next(model_dir.glob("artifacts/student_model/vocab.json")).read_text())
    rows = example if isinstance(example, list) else example.get("inputs", example)
    for row in rows:
        assert {c for v in row["diagnoses"] for c in v} <= set(vocab["diagnosis"])
    # the model, the teacher and the student weights are artifacts of the run
    names = {a.path for a in client.list_artifacts(version.run_id, "models")}
    assert {"models/teacher_model", "models/student_model"} <= names


def test_the_readme_loads_the_champion():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "models:/leader-student@champion" in readme
    assert "models:/leader-student/latest" not in readme
