"""Custom Kedro datasets, only where kedro-datasets has none.

- ``TeacherFeaturesDataset`` (features_dataset.py): float16 teacher hidden states + sample ids +
  fingerprint in one versioned safetensors file.
- ``TeacherModelDataset`` (teacher_dataset.py) and ``StudentModelDataset`` (student_dataset.py)
  are exported lazily, so importing this package never loads their dependencies.
"""

from importlib import import_module

from leader_kedro.datasets.features_dataset import TeacherFeaturesDataset

_LAZY = {
    "TeacherModelDataset": "leader_kedro.datasets.teacher_dataset",
    "StudentModelDataset": "leader_kedro.datasets.student_dataset",
}

__all__ = ["TeacherFeaturesDataset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leader_kedro.datasets' has no attribute {name!r}")
