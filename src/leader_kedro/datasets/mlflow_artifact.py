"""kedro-mlflow's ``MlflowArtifactDataset`` around a *versioned* dataset, in Kedro 1.x.

kedro-mlflow's wrapper builds its inner dataset itself, so a ``versioned: true`` inside it gets a
save version of its own, which Kedro 1.x refuses ("All datasets in the catalog must have the same
save version"), and a ``versioned: true`` beside it is an unexpected ``version`` argument. This
class takes the catalog's version (outside, where Kedro puts it: also when a ``CachedDataset``
wraps it) and hands it to the inner dataset. It also logs only while an MLflow run is open: a
``CachedDataset`` hides the wrapper from kedro-mlflow's switch that turns logging off when
tracking is disabled, and MLflow would otherwise open a run of its own.

Catalog::

    student_model:
      type: leader_kedro.datasets.mlflow_artifact.VersionedMlflowArtifactDataset
      versioned: true
      artifact_path: models
      dataset:
        type: leader_kedro.datasets.student_dataset.StudentModelDataset
        filepath: data/06_models/student_model
"""

from __future__ import annotations

from typing import Any

from kedro_mlflow.io.artifacts import MlflowArtifactDataset


class VersionedMlflowArtifactDataset(MlflowArtifactDataset):
    """``MlflowArtifactDataset`` whose inner dataset is versioned with the catalog's version."""

    def __new__(  # type: ignore[misc]
        cls,
        dataset: str | dict,
        run_id: str | None = None,
        artifact_path: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        version=None,
    ):
        inner = {"type": dataset} if isinstance(dataset, str) else dict(dataset)
        inner.pop("versioned", None)
        if version is not None:
            inner["versioned"] = True
        instance = MlflowArtifactDataset.__new__(
            MlflowArtifactDataset,
            dataset=inner,
            run_id=run_id,
            artifact_path=artifact_path,
            credentials=credentials,
            metadata=metadata,
        )
        if version is not None:
            instance._version = version  # the catalog's load/save version, not a fresh one
        instance.__class__ = _only_with_a_run(type(instance))
        return instance


_GUARDED: dict[type, type] = {}


def _only_with_a_run(child: type) -> type:
    """A subclass of kedro-mlflow's generated class (same name, so kedro-mlflow still finds it)
    whose logging switch also requires an open MLflow run (or an explicit ``run_id``)."""
    if child not in _GUARDED:
        flag = child._logging_activated  # the property kedro-mlflow defines

        def getter(self) -> bool:
            import mlflow

            return bool(flag.fget(self)) and (bool(self.run_id) or mlflow.active_run() is not None)

        _GUARDED[child] = type(
            child.__name__,
            (child,),
            {"_logging_activated": property(getter, flag.fset), "__qualname__": child.__qualname__},
        )
    return _GUARDED[child]
