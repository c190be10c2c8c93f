"""Project pipelines: one per stage, ``__default__`` chains them all."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

STAGES = ("ingest", "prompts", "teacher", "features", "distill", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in STAGES if name in pipelines), Pipeline([])
    )
    return pipelines
