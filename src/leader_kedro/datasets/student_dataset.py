"""``StudentModelDataset``: the trained LEADER(S) student as a versioned directory.

On disk (local filesystem): ``student.safetensors`` (state dict), ``student_config.json``,
``vocab.json`` and ``code_names.json``. Loads a :class:`leader_kedro.student.model.StudentBundle`.

Catalog::

    student_model:
      type: leader_kedro.datasets.student_dataset.StudentModelDataset
      filepath: data/06_models/student_model
      versioned: true
"""

from __future__ import annotations

import glob
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from leader_kedro.datasets._atomic import write_dir_atomic


class StudentModelDataset(AbstractVersionedDataset[Any, Any]):
    """Saves/loads a ``StudentBundle`` as a directory (safetensors weights + json config/vocab)."""

    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(Path(filepath).as_posix()),
            version=version,
            exists_function=lambda p: Path(p).is_dir(),
            glob_function=glob.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}

    def _exists(self) -> bool:
        try:
            path = Path(str(self._get_load_path()))
        except DatasetError:
            return False
        return path.is_dir() and (path / "student_config.json").is_file()

    def _load(self):
        from leader_kedro.student.model import load_bundle

        return load_bundle(Path(str(self._get_load_path())))

    def _save(self, data) -> None:
        from leader_kedro.student.model import StudentBundle, save_bundle

        if not isinstance(data, StudentBundle):
            raise DatasetError(
                f"StudentModelDataset({self._filepath}) saves a StudentBundle, got {type(data).__name__}"
            )
        # written in a temporary folder, then renamed: never a half-written student on disk
        write_dir_atomic(Path(str(self._get_save_path())), lambda tmp: save_bundle(data, tmp))
