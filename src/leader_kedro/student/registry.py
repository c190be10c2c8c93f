"""``leader-student`` in the MLflow model registry: log, register, trace, and crown the champion.

* :func:`example_patients`: the input example stored with every version is made up from the
  vocabulary (a first-visit and a two-visit patient), never a row of the data: on MIMIC, a real
  row would carry a patient's code history and demographics to anyone who can read the registry.
* :func:`log_student`: logs :class:`~leader_kedro.student.service.LeaderStudentService` in the
  active run with the student directory and the DDI pairs as artifacts, the signature MLflow
  derives from the typed ``predict``, the example, pinned requirements and the package's own code
  (``code_paths``), so the model loads where this package is not installed. It registers the
  version, tags it (val PRAUC, lineage of the feature cache and teacher) and applies the rule:
* **champion rule** (:func:`champion_decision`): the new version gets the alias ``champion`` only
  when its val PRAUC is strictly higher than the current champion's (or there is no champion yet,
  or the champion has no recorded val PRAUC). Otherwise the alias stays where it is. The decision
  and its reason are returned (``student_registration.json``) and set as version tags.
  Comparing val PRAUCs only means something on the same validation set: the tag
  ``val_set_fingerprint`` records which one each version was measured on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leader_kedro.contracts import PROFILE_FIELDS

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
VAL_PRAUC_TAG = "val_prauc"
#: the packages the served model imports; pinned to this environment's versions
REQUIREMENTS = ("torch", "safetensors", "pandas", "numpy", "pydantic", "mlflow")


def example_patients(vocab: Mapping[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Two made-up patients drawn from the vocabulary (no data row): a first visit and a
    patient with one past visit. The same vocabulary and seed give the same patients."""
    rng = random.Random(seed)

    def pick(kind: str, k: int) -> list[str]:
        codes = list(vocab.get(kind) or [])
        return sorted(rng.sample(codes, min(k, len(codes))))

    profile = vocab.get("profile") or {}

    def value(field: str) -> str | None:
        known = [v for v in profile.get(field, []) if v != "unknown"]
        return rng.choice(known) if known else None

    first = {
        "diagnoses": [pick("diagnosis", 3)],
        "procedures": [pick("procedure", 1)],
        "medications": [],
        **{f: value(f) for f in PROFILE_FIELDS},
        "age": 67.0,
        "top_k": 5,
    }
    returning = {
        "diagnoses": [pick("diagnosis", 2), pick("diagnosis", 3)],
        "procedures": [pick("procedure", 1), []],
        "medications": [pick("medication", 3)],
        **{f: value(f) for f in PROFILE_FIELDS},
        "age": 74.0,
        "top_k": 5,
    }
    return [first, returning]


def val_set_fingerprint(sample_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(map(str, sample_ids)).encode()).hexdigest()[:16]


def champion_decision(
    new_val_prauc: float | None, champion: Mapping[str, Any] | None
) -> tuple[bool, str]:
    """Whether a new version takes the ``champion`` alias, and why.

    ``champion`` is the current champion (``version``, ``val_prauc``) or None."""
    if new_val_prauc is None or new_val_prauc != new_val_prauc:
        return False, "the new version has no val PRAUC"
    if champion is None:
        return True, "there was no champion"
    current = champion.get("val_prauc")
    if current is None:
        return True, f"champion v{champion.get('version')} has no recorded val PRAUC"
    if new_val_prauc > current:
        return True, (
            f"val PRAUC {new_val_prauc:.4f} beats champion v{champion.get('version')} "
            f"({current:.4f})"
        )
    return False, (
        f"val PRAUC {new_val_prauc:.4f} does not beat champion v{champion.get('version')} "
        f"({current:.4f})"
    )


def current_champion(client, model_name: str) -> dict[str, Any] | None:
    """The version holding the ``champion`` alias and its val PRAUC tag (None: no champion)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        return None
    raw = (version.tags or {}).get(VAL_PRAUC_TAG)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        value = None
    return {"version": int(version.version), "val_prauc": value}


def promote_if_better(
    client, model_name: str, version: int, val_prauc: float | None, tracking_uri: str = ""
) -> dict[str, Any]:
    """Apply the champion rule to ``version`` (atomically between runs sharing a sqlite store)."""
    with _registry_lock(tracking_uri):
        champion = current_champion(client, model_name)
        promote, reason = champion_decision(val_prauc, champion)
        if promote:
            client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version))
    client.set_model_version_tag(model_name, str(version), "champion_decision", reason)
    logger.info("leader-student v%s: %s", version, reason)
    return {
        "champion": promote,
        "reason": reason,
        "previous_champion": champion,
        "champion_version": version if promote else (champion or {}).get("version"),
    }


@contextmanager
def _registry_lock(tracking_uri: str) -> Iterator[None]:
    """Read-compare-set of the alias under an exclusive file lock beside a sqlite store."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    db = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    with open(db.with_name(db.name + ".registry.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def requirements() -> list[str]:
    """Pinned pip requirements of the served model, installable from a package index (the
    ``leader_kedro`` code travels with the model instead of being a requirement)."""
    from importlib.metadata import version

    pins = []
    for name in REQUIREMENTS:
        pins.append(f"{name}=={version(name).split('+')[0]}")
    return pins


def copy_code(destination: Path) -> Path:
    """A copy of the ``leader_kedro`` package (without caches) for ``code_paths``."""
    import leader_kedro

    source = Path(leader_kedro.__file__).resolve().parent
    target = destination / "leader_kedro"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_student(
    bundle,
    ddi_pairs: list[list[str]],
    *,
    artifact_name: str = "leader_student",
    model_name: str | None = "leader-student",
    top_k: int = 10,
    val_prauc: float | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Log the student in the active MLflow run, register it as ``model_name`` (None: log only),
    tag the version and apply the champion rule. Returns what ``student_registration`` records."""
    import mlflow

    from leader_kedro.student.model import save_bundle
    from leader_kedro.student.service import DDI_FILE, LeaderStudentService

    example = example_patients(bundle.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = root / "student_model"
        save_bundle(bundle, model_dir)
        ddi_file = root / DDI_FILE
        ddi_file.write_text(json.dumps({"pairs": ddi_pairs}))
        code = copy_code(root / "code")
        info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=LeaderStudentService(top_k=top_k),
            artifacts={"student_model": str(model_dir), "ddi_pairs": str(ddi_file)},
            input_example=example,
            code_paths=[str(code)],
            pip_requirements=requirements(),
        )
    result: dict[str, Any] = {
        "model_uri": info.model_uri,
        "run_id": info.run_id,
        "signature": str(info.signature),
        "val_prauc": val_prauc,
        "registered_model_name": model_name,
        "registered_model_version": None,
    }
    if model_name is None:
        return result
    client = mlflow.MlflowClient()
    version = mlflow.register_model(info.model_uri, model_name)
    number = int(version.version)
    version_tags = {**(tags or {})}
    if val_prauc is not None:
        version_tags[VAL_PRAUC_TAG] = f"{val_prauc:.6f}"
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, str(number), key, str(value))
    result["registered_model_version"] = number
    result.update(
        promote_if_better(client, model_name, number, val_prauc, mlflow.get_tracking_uri())
    )
    return result


def lineage_tags(run_id: str | None) -> dict[str, str]:
    """The ``lineage.*`` tags of a run (feature cache path and fingerprint, teacher fingerprint;
    set by the project's ``LineageHook``), to be copied onto the registered version."""
    if not run_id:
        return {}
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith("lineage.")}
