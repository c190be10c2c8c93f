"""``LineageHook``: every MLflow run records which artifacts it read and wrote, by path and version.

When kedro-mlflow has a run open, the hook sets run tags for

* each feature cache a node loads (``teacher_features_{split}``): ``lineage.<name>.path`` (the
  versioned file), ``.fingerprint`` (teacher + prompts + tokenizer) and ``.teacher_fingerprint``;
* the ``teacher_model`` and ``student_model`` a node loads or saves: ``lineage.<name>.path``.

``register_student`` copies the ``lineage.*`` tags onto the registered ``leader-student`` version,
so any version in the registry leads back to the feature cache, and through its fingerprints to
the teacher and prompts, that it was distilled from. Without an open run the hook does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

TRACED = ("teacher_model", "student_model")
FEATURES_PREFIX = "teacher_features_"
SPLITS = ("train", "val", "test")


def _is_feature_cache(name: str) -> bool:
    return name.startswith(FEATURES_PREFIX) and name[len(FEATURES_PREFIX) :] in SPLITS


class LineageHook:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data, node) -> None:
        if _is_feature_cache(dataset_name) and isinstance(data, dict):
            meta = data.get("metadata") or {}
            self._tag(
                dataset_name,
                {
                    "path": self._path(dataset_name, "load"),
                    "fingerprint": data.get("fingerprint"),
                    "teacher_fingerprint": meta.get("teacher_fingerprint"),
                },
            )
        elif dataset_name in TRACED:
            self._tag(dataset_name, {"path": self._path(dataset_name, "load")})

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if dataset_name in TRACED or _is_feature_cache(dataset_name):
            fields: dict[str, Any] = {"path": self._path(dataset_name, "save")}
            if isinstance(data, dict) and "fingerprint" in data:
                fields["fingerprint"] = data.get("fingerprint")
            self._tag(dataset_name, fields)

    def _path(self, name: str, mode: str) -> str | None:
        """The versioned path a dataset loaded from or saved to (None when not found)."""
        if self._catalog is None:
            return None
        try:
            dataset = self._catalog.get(name)
            dataset = getattr(dataset, "_dataset", dataset)  # CachedDataset
            path = dataset._get_load_path() if mode == "load" else dataset._get_save_path()
        except Exception:  # not versioned, or a dataset without paths: nothing to trace
            return None
        return str(path)

    @staticmethod
    def _tag(name: str, fields: dict[str, Any]) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        tags = {f"lineage.{name}.{k}": str(v) for k, v in fields.items() if v is not None}
        if tags:
            mlflow.set_tags(tags)
