"""``TeacherModelDataset``: the fine-tuned LEADER(T) as one versioned Kedro dataset.

On disk (one directory per version): ``adapter/`` (peft ``save_pretrained``), ``head.safetensors``,
``teacher_config.json`` (backbone reference as given and resolved, pooling, max_length, medication
list, LoRA settings, fingerprint) and ``tokenizer/``. The frozen backbone is *referenced*, never
copied. ``load`` returns a :class:`leader_kedro.teacher.model.TeacherBundle`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError, Version

from leader_kedro.datasets._atomic import write_dir_atomic


class TeacherModelDataset(AbstractVersionedDataset[Any, Any]):
    """Save a ``TeacherBundle`` as a directory; load it back into a ``TeacherBundle``.

    Example catalog entry::

        teacher_model:
          type: leader_kedro.datasets.teacher_dataset.TeacherModelDataset
          filepath: data/06_models/teacher_model
          versioned: true
          load_args: {device: null, verify: true}   # device null = cuda if available else cpu
    """

    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._load_args = dict(load_args or {})
        unknown = set(self._load_args) - {"device", "verify"}
        if unknown:
            raise DatasetError(
                f"TeacherModelDataset load_args: unknown keys {sorted(unknown)} (expected device, verify)"
            )
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(filepath), version=version)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version, "load_args": self._load_args}

    def load(self):
        from leader_kedro.teacher.model import load_teacher

        path = Path(str(self._get_load_path()))
        if not (path / "teacher_config.json").is_file():
            raise DatasetError(
                f"teacher_model: no saved teacher at {path}; make it with `kedro run --pipeline=teacher`"
            )
        return load_teacher(path, **self._load_args)

    def save(self, data) -> None:
        from leader_kedro.teacher.model import TeacherBundle, save_teacher

        if not isinstance(data, TeacherBundle):
            raise DatasetError(
                f"teacher_model expects a TeacherBundle to save, got {type(data).__name__}"
            )
        # written in a temporary folder, then renamed: never a half-written teacher on disk
        write_dir_atomic(Path(str(self._get_save_path())), lambda tmp: save_teacher(data, tmp))

    def _exists(self) -> bool:
        try:
            path = Path(str(self._get_load_path()))
        except DatasetError:
            return False
        return (path / "teacher_config.json").is_file()
