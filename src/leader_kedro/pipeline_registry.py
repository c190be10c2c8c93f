"""Project pipelines: one per stage, in flow order, ``__default__`` chains them all.

Each stage is its own namespace (node ``distill.train_students``), so kedro-viz folds the full
view into one block per stage; dataset and parameter names stay as they are
(``prefix_datasets_with_namespace=False``): the catalog names are the stages' contract.
Pipelines that are not stages of the flow (``score``: batch scoring with the champion) are
registered after them and are not part of ``__default__``.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

STAGES = ("ingest", "prompts", "teacher", "features", "distill", "evaluate")


def _namespaced(name: str, pipeline: Pipeline) -> Pipeline:
    return Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)


def register_pipelines() -> dict[str, Pipeline]:
    found = find_pipelines(raise_errors=True)
    stages = {name: _namespaced(name, found[name]) for name in STAGES if name in found}
    others = {
        name: _namespaced(name, pipeline)
        for name, pipeline in sorted(found.items())
        if name not in stages and name != "__default__"
    }
    return {"__default__": sum(stages.values(), Pipeline([])), **stages, **others}
