"""Atomic writes for the project's datasets: write under a temporary name, then rename.

A run killed mid-save leaves a hidden ``.<name>.tmp-<random>`` file or folder beside the artifact
(never read, removed by the next save of the same artifact), never a half-written artifact
under the real name. ``os.replace`` is atomic on POSIX within one filesystem; the temporary name
sits in the same folder for that reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path``."""
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    """``path`` holds ``payload`` in full, or keeps what it held before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dir_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary folder, then put it at ``path`` in one rename.

    An existing ``path`` is moved aside first and removed after the swap (a directory cannot be
    replaced by ``os.replace`` unless empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = temp_sibling(path)
    old = None
    try:
        write(tmp)
        if path.exists():
            old = temp_sibling(path)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _remove_stale_temps(path: Path) -> None:
    """Temporary folders of ``path`` left by a killed save."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
