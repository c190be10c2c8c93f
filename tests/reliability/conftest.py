"""Fixtures of the fault-injection suite: a tiny random BERT teacher backbone, the tiny cohort
with prompts (tests/tiny_cohort.py), and the whole flow run twice on conf/test, so every fault is
injected in seconds on a CPU. Helpers: reliability_kit.py (importable: this folder is on the path).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reliability_kit import (  # noqa: E402
    NodeSpy,
    flow_params,
    new_project,
    run_session,
)
from tiny_cohort import make_tiny_cohort, save_tiny_bert, tiny_prompts  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_cohort() -> dict:
    cohort = make_tiny_cohort(60, seed=0)
    for split in ("train", "val", "test"):
        cohort[f"prompts_{split}"] = tiny_prompts(cohort[f"samples_{split}"])
    return cohort


@pytest.fixture(scope="session")
def flow(tiny_bert, tmp_path_factory) -> dict:
    """The whole default flow (conf/test, tiny teacher) run twice with the same seed, in two
    project copies; the first run's node inputs and outputs are kept for the leakage tests."""
    root = tmp_path_factory.mktemp("flow")
    spy = NodeSpy()
    projects = {}
    for name, hooks in (("a", [spy]), ("b", [])):
        projects[name] = new_project(root / name)
        run_session(projects[name], flow_params(tiny_bert), hooks=hooks)
    return {"a": projects["a"], "b": projects["b"], "spy": spy, "tiny_bert": tiny_bert}
