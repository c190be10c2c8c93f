"""Helpers of the fault-injection suite (fixtures are in conftest.py beside this file)."""

from __future__ import annotations

import os
from pathlib import Path

from kedro.framework.hooks import hook_impl


# --------------------------------------------------------------------------- the whole flow
def _root_conftest():
    """tests/conftest.py as a module (the name ``conftest`` is taken by this folder's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_leader_tests_conftest", Path(__file__).parents[1] / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_project(root: Path, tracking: bool = False) -> Path:
    """A throw-away project copy (tests/conftest.py ``copy_project``) with a ``logs/`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    project = _root_conftest().copy_project(root, tracking=tracking)
    (project / "logs").mkdir(exist_ok=True)
    return project


def flow_params(tiny_bert: str) -> dict:
    """conf/test, with the tiny random BERT as teacher and the efficiency timings off."""
    return {
        "teacher": {"backbone": tiny_bert, "lora": {"layers_to_transform": [1]}},
        "evaluate": {"efficiency": {"enabled": False}},
    }


def run_session(project: Path, params: dict, hooks=(), env: str = "test", **run_kwargs):
    """``session.run`` of the project in this process, from the project folder."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    cwd = os.getcwd()
    os.chdir(project)
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
            for hook in hooks:
                session._hook_manager.register(hook)
            return session.run(**run_kwargs)
    finally:
        os.chdir(cwd)


class NodeSpy:
    """Keeps the inputs and outputs of every node that reads a ``*_test`` dataset, and the
    inputs of every node tagged ``training``."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}

    @hook_impl
    def after_node_run(self, node, catalog, inputs, outputs, is_async, run_id) -> None:
        if "training" in node.tags or any(name.endswith("_test") for name in node.inputs):
            # keyed by the bare node name (the registered pipelines namespace nodes by stage)
            name = node.name.rsplit(".", 1)[-1]
            self.runs[name] = {"node": node, "inputs": dict(inputs), "outputs": outputs}
