"""``TeacherFeaturesDataset``: the float16 teacher feature cache as a versioned safetensors file.

On disk: one ``.safetensors`` file holding the tensor ``hidden`` (float16 ``[N, H]``) and, in the
safetensors header metadata, the sample ids (JSON), the fingerprint and the provenance metadata
(teacher fingerprint, backbone, created-at, ...). Loaded value::

    {"sample_ids": list[str], "hidden": torch.float16 tensor [N, H],
     "fingerprint": str, "metadata": dict}

Catalog::

    teacher_features:
      type: leader_kedro.datasets.TeacherFeaturesDataset
      filepath: data/04_feature/teacher_features.safetensors
      versioned: true
"""

from __future__ import annotations

import json
import struct
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from leader_kedro.datasets._atomic import write_bytes_atomic

REQUIRED_KEYS = ("sample_ids", "hidden", "fingerprint", "metadata")


class TeacherFeaturesDataset(AbstractVersionedDataset[dict, dict]):
    """Teacher hidden states (float16) + sample ids + fingerprint in one safetensors file."""

    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **deepcopy(credentials or {}), **(fs_args or {}))
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _save(self, data: dict) -> None:
        import torch
        from safetensors.torch import save

        if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
            raise DatasetError(
                f"TeacherFeaturesDataset({self._filepath}) saves a dict with keys "
                f"{list(REQUIRED_KEYS)}, got "
                f"{sorted(data) if isinstance(data, dict) else type(data).__name__}"
            )
        hidden = torch.as_tensor(data["hidden"]).detach().to("cpu", torch.float16).contiguous()
        ids = [str(s) for s in data["sample_ids"]]
        if hidden.ndim != 2 or hidden.shape[0] != len(ids):
            raise DatasetError(
                f"TeacherFeaturesDataset({self._filepath}): 'hidden' must be [N, H] with N = "
                f"len(sample_ids) = {len(ids)}, got shape {tuple(hidden.shape)}"
            )
        header = {
            "format": "leader-teacher-features",
            "sample_ids": json.dumps(ids),
            "fingerprint": str(data["fingerprint"]),
            "metadata": json.dumps(data["metadata"] or {}, default=str),
        }
        payload = save({"hidden": hidden}, metadata=header)
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        if self._protocol == "file":
            # temp name + os.replace: a killed run never leaves a half-written cache
            write_bytes_atomic(save_path, payload)
        else:  # object stores write an object in one request
            self._fs.makedirs(str(PurePosixPath(save_path).parent), exist_ok=True)
            with self._fs.open(save_path, "wb") as f:
                f.write(payload)
        self._invalidate_cache()

    def _load(self) -> dict:
        from safetensors.torch import load

        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(load_path, "rb") as f:
            payload = f.read()
        header = _read_metadata(payload, load_path)
        try:
            tensors = load(payload)
        except Exception as exc:  # safetensors raises its own error type on a short buffer
            raise DatasetError(f"{load_path} is not a complete safetensors file: {exc}") from exc
        if "hidden" not in tensors:
            raise DatasetError(f"{load_path} has no tensor 'hidden' (a teacher feature cache?)")
        for key in ("sample_ids", "fingerprint", "metadata"):
            if key not in header:
                raise DatasetError(
                    f"{load_path} lacks the '{key}' metadata of a teacher feature cache; "
                    "re-make it with `kedro run --pipeline=features`"
                )
        try:
            ids = json.loads(header["sample_ids"])
            metadata = json.loads(header["metadata"])
        except ValueError as exc:
            raise DatasetError(f"{load_path}: unreadable header metadata: {exc}") from exc
        hidden = tensors["hidden"]
        if hidden.ndim != 2 or hidden.shape[0] != len(ids):
            raise DatasetError(
                f"{load_path}: 'hidden' has shape {tuple(hidden.shape)} for {len(ids)} sample ids"
            )
        return {
            "sample_ids": ids,
            "hidden": hidden,
            "fingerprint": header["fingerprint"],
            "metadata": metadata,
        }

    def _invalidate_cache(self) -> None:
        """Forget cached file listings so that a new version is seen at once."""
        filepath = get_filepath_str(self._filepath, self._protocol)
        self._fs.invalidate_cache(filepath)


def _read_metadata(payload: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte little-endian header size, JSON)."""
    try:
        (size,) = struct.unpack("<Q", payload[:8])
        header = json.loads(payload[8 : 8 + size])
    except (struct.error, ValueError) as exc:
        raise DatasetError(f"{where} is not a safetensors file: {exc}") from exc
    return dict(header.get("__metadata__") or {})
