"""The whole default flow on a tiny synthetic cohort, in a throw-away copy of the project.

The copy (pyproject + conf, the package itself is installed) keeps the user's own data/ and
mlflow.db untouched. Tracking is ON here so the kedro-mlflow integration and the model
registry are exercised for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(project: Path, pipeline: str | None = None, env: str = "test"):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        return session.run(pipeline_name=pipeline)


def test_distill_on_a_fresh_project_names_the_missing_artifact(tmp_path, monkeypatch, project_copy):
    from leader_kedro.contracts import MissingArtifactError

    project = project_copy(tmp_path, tracking=False)
    monkeypatch.chdir(project)
    with pytest.raises(MissingArtifactError) as excinfo:
        _run(project, "distill")
    message = str(excinfo.value)
    assert "teacher_features_train" in message
    assert "kedro run --pipeline=features" in message
    assert "samples_train" in message and "kedro run --pipeline=ingest" in message


@pytest.mark.slow
def test_default_flow_end_to_end_with_mlflow(tracked_flow, tmp_path):
    project = tracked_flow  # the default flow, tracking on (tests/conftest.py)

    reporting = project / "data" / "08_reporting"
    metrics = json.loads((reporting / "metrics.json").read_text())
    report = (reporting / "report.md").read_text()
    assert "student" in report and "teacher" in report
    assert list(reporting.glob("*.png")), "the report should come with plots"
    assert metrics, "metrics.json is empty"

    # kedro-mlflow recorded the run in the sqlite store at the project root
    db = project / "mlflow.db"
    assert db.exists()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(
        "leader_kedro_test"
    ) or client.get_experiment_by_name("leader_kedro")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and any(run.data.params for run in runs)

    # the registered student loads in a fresh process and scores a first-visit patient
    versions = client.search_model_versions("name='leader-student'")
    assert versions
    script = textwrap.dedent(
        f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri("sqlite:///{db}")
        model = mlflow.pyfunc.load_model("models:/leader-student@champion")
        patient = pd.DataFrame([{{
            "diagnoses": [["4019", "42731"]], "procedures": [[]], "medications": [],
            "gender": "F", "age": 71.0, "insurance": "Medicare", "language": "ENGL",
            "marital_status": "WIDOWED", "ethnicity": "WHITE", "admission_type": "EMERGENCY",
        }}])
        out = model.predict(patient)
        print(len(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 0
