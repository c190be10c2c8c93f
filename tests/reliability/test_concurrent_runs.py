"""Fault 5: two `kedro run`s at once on one MLflow store (sqlite), both registering the student.

Two throw-away project copies with the first flow run's artifacts share one ``mlflow.db`` (as two
users of a team server would) and run ``kedro run --pipeline=distill`` with tracking on, at the
same time. Both must finish, each with its run and its registered ``leader-student`` version.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from reliability_kit import new_project


def test_two_concurrent_runs_share_one_mlflow_db(flow, tmp_path, monkeypatch):
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    projects = []
    for name in ("one", "two"):
        project = new_project(tmp_path / name, tracking=True)
        shutil.copytree(flow["a"] / "data", project / "data", dirs_exist_ok=True)
        (project / "conf" / "test" / "mlflow.yml").write_text(
            f"server:\n  mlflow_tracking_uri: sqlite:///{db}\n"
        )
        projects.append(project)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kedro", "run", "--env", "test", "--pipeline=distill"],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for project in projects
    ]
    start = time.monotonic()
    errors = [p.communicate(timeout=600)[1] for p in procs]
    print(f"two concurrent distill runs: {time.monotonic() - start:.1f}s")
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err[-4000:]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.params and r.data.metrics for r in runs), "both runs logged in full"
    versions = client.search_model_versions("name='leader-student'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
    # read each registered version back from the shared store (monkeypatch restores the
    # registry URI; mlflow.set_registry_uri would leak an environment variable)
    from mlflow.tracking._model_registry import utils as registry_utils

    monkeypatch.setattr(registry_utils, "_registry_uri", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    for version in versions:
        assert version.status == "READY"
        local = mlflow.artifacts.download_artifacts(f"models:/leader-student/{version.version}")
        assert (Path(local) / "MLmodel").is_file(), version.source
