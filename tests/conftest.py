"""Shared test setup: offline, no telemetry, and the path to the real MIMIC demos."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# shared test helpers (tiny_cohort.py) live beside this file; the tests sit in per-package folders
sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, read in place; tests that need it skip with the reason when absent."""
    if not (SHARED_DATA / "mimic3_demo").is_dir():
        pytest.skip(f"real MIMIC demo data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


def copy_project(dst: Path, tracking: bool = False) -> Path:
    """A throw-away copy of the project (pyproject + conf; the package itself is installed).

    Session tests run there, so they never overwrite the user's own data/ or mlflow.db.
    ``tracking=True`` drops the test env's switch that turns kedro-mlflow tracking off.
    """
    import shutil

    shutil.copy(PROJECT_ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    (dst / "data").mkdir()
    (dst / "src").mkdir()  # bootstrap_project wants it; the package itself is installed
    if tracking:
        (dst / "conf" / "test" / "mlflow.yml").unlink()
    return dst


@pytest.fixture
def project_copy():
    """The ``copy_project`` function, for tests that need tracking on or several copies."""
    return copy_project


@pytest.fixture
def isolated_project(tmp_path, monkeypatch) -> Path:
    """A project copy in tmp_path, made the working directory (relative catalog paths land there)."""
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    monkeypatch.chdir(project)
    return project


@pytest.fixture(autouse=True)
def _no_mlflow_state_leaks():
    """A kedro-mlflow session leaves its run, its hook's run id and the tracking URI in
    process-global state; reset them after every test so that tests stay independent of their
    order. (kedro-mlflow's hook is a process-wide singleton that keeps the last run id even when
    a later session has tracking off.)"""
    yield
    _reset_mlflow_state()


@pytest.fixture(scope="session")
def tracked_flow(tmp_path_factory) -> Path:
    """The whole default flow (conf/test) with MLflow tracking on, run once per session in a
    project copy: its ``mlflow.db`` holds the run and the registered ``leader-student`` with the
    alias ``champion``. The end-to-end test checks the flow; the serve, score, registry and
    notebook tests use what it made (never the user's own mlflow.db)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path_factory.mktemp("tracked_flow"), tracking=True)
    (project / "logs").mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env="test") as session:
            session.run()
    finally:
        os.chdir(cwd)
        _reset_mlflow_state()
    return project


def _reset_mlflow_state() -> None:
    import mlflow
    from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook

    mlflow_hook.run_id = None
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
