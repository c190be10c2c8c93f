"""Project settings: config loader resolvers and project hooks."""

from pathlib import Path

from kedro.config import OmegaConfigLoader

from leader_kedro.hooks import (
    DamagedArtifactHook,
    MissingArtifactHook,
    NodeTimingHook,
    SqliteTrackingHook,
)
from leader_kedro.lineage import LineageHook


def _project_root() -> str:
    """The Kedro project root, so paths in config never depend on the working directory.

    Outside a project (a packaged run: ``kedro package``, then ``python -m leader_kedro`` or
    ``leader-kedro`` with ``--conf-source``), the working directory is the root: the run writes
    its ``data/``, ``mlflow.db`` and ``mlartifacts/`` there, never beside the installed package.
    """
    from kedro.utils import find_kedro_project

    root = find_kedro_project(Path.cwd())
    return str((root or Path.cwd()).resolve())


HOOKS = (
    MissingArtifactHook(),
    DamagedArtifactHook(),
    SqliteTrackingHook(),
    LineageHook(),
    NodeTimingHook(),
)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"project_root": _project_root},
    # environments (test, mimic3, llm, ...) override only the keys they name
    "merge_strategy": {"parameters": "soft"},
}
