"""Project hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from leader_kedro.contracts import MissingArtifactError

logger = logging.getLogger(__name__)


class MissingArtifactHook:
    """Fail fast, before any node runs, when a stage's inputs were never produced.

    Without it, ``kedro run --pipeline=distill`` on a fresh clone dies deep inside a dataset
    load; with it, the user reads which artifact is missing and which command makes it.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        producers = _producing_stages()
        missing = []
        for name in sorted(pipeline.inputs()):
            if name.startswith("params:") or name == "parameters" or name not in producers:
                continue
            if not catalog.exists(name):
                missing.append(name)
        if missing:
            lines = [
                f"  - '{name}' ({_describe(catalog, name)}): make it with "
                f"`kedro run --pipeline={producers[name]}`"
                for name in missing
            ]
            raise MissingArtifactError(
                "This pipeline needs artifacts that are not on disk yet:\n" + "\n".join(lines)
            )


def _producing_stages() -> dict[str, str]:
    """Which stage writes each artifact.

    Built from the stage modules themselves: Kedro 1.7 loads only the requested pipelines
    into ``kedro.framework.project.pipelines``, so the producers would be invisible there.
    """
    import importlib

    from leader_kedro.pipeline_registry import STAGES

    producers: dict[str, str] = {}
    for stage in STAGES:
        module = importlib.import_module(f"leader_kedro.pipelines.{stage}.pipeline")
        for output in module.create_pipeline().all_outputs():
            producers.setdefault(output, stage)
    return producers


def _describe(catalog, name: str) -> str:
    try:
        dataset = catalog.get(name) if hasattr(catalog, "get") else catalog._get_dataset(name)
        filepath = getattr(dataset, "_filepath", None)
        return str(filepath) if filepath is not None else type(dataset).__name__
    except Exception:  # describing is best effort; the missing name is the message
        return "catalog entry"
