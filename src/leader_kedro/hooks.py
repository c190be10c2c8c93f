"""Project hooks: missing artifacts stop a run before any node runs, damaged ones with one message.

- :class:`MissingArtifactHook`: a stage's input was never produced -> :class:`MissingArtifactError`
  naming each missing artifact and the ``kedro run --pipeline=<stage>`` that makes it.
- :class:`DamagedArtifactHook`: an input exists but cannot be read (truncated, emptied, garbage,
  half-written) -> :class:`DamagedArtifactError` naming the artifact, why it failed in one line,
  and the command that rebuilds it. Works for the stock kedro-datasets (parquet, json, csv) and
  the project's own datasets alike, because it watches the catalog loads of the runner.
- :class:`SqliteTrackingHook`: runs sharing one sqlite ``mlflow.db`` create its tables one at a
  time.
- :class:`NodeTimingHook`: the wall time of every node, saved to the ``node_timings`` dataset
  after each node (the evaluate report renders it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from leader_kedro.contracts import USER_ERRORS, DamagedArtifactError, MissingArtifactError

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


class DamagedArtifactHook:
    """Turn a failed dataset load into one message that names the artifact and its rebuild command.

    The runner loads a node's inputs one by one between ``before_dataset_loaded`` and
    ``after_dataset_loaded``; a load that started and never finished is the one that failed. When
    the pipeline then fails, this hook (called last, after kedro-mlflow closed its run) raises
    :class:`DamagedArtifactError` from the original error, so the CLI prints one line and the
    log file keeps the full chain.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loading: list[str] = []

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        with self._lock:
            self._loading.clear()

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node) -> None:
        with self._lock:
            self._loading.append(dataset_name)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data, node) -> None:
        with self._lock:
            if dataset_name in self._loading:
                self._loading.remove(dataset_name)

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception, run_params, pipeline, catalog) -> None:
        with self._lock:
            pending, self._loading = list(self._loading), []
        if not pending or isinstance(error, USER_ERRORS):
            return
        # several loads pending (async loading): the one the error names
        text = str(error)
        name = next(
            (n for n in pending if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text)), pending[0]
        )
        raise DamagedArtifactError(damaged_message(name, error, catalog)) from error


class SqliteTrackingHook:
    """Several ``kedro run``s may share one sqlite ``mlflow.db`` (one team store, or runs side by
    side): the first one to open a fresh file creates its tables while the others wait.

    MLflow builds a fresh sqlite store's schema without a lock: two runs starting together both
    run the migrations and one dies (``duplicate column``). Called before kedro-mlflow's own
    ``after_context_created``, this hook creates the schema and the run's experiment under an
    exclusive file lock (``<db>.lock``). Later writes are serialised by sqlite itself; MLflow
    waits up to 20 s for a busy database (``PRAGMA busy_timeout``) and retries the version number
    of a registered model.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        try:
            loader = context.config_loader
            if "mlflow" not in loader.config_patterns:
                loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
            conf = dict(loader["mlflow"] or {})
        except Exception:  # no mlflow.yml: kedro-mlflow's defaults, nothing shared to guard
            return
        uri = str((conf.get("server") or {}).get("mlflow_tracking_uri") or "")
        if not uri.startswith("sqlite:///"):
            return
        experiment = (conf.get("tracking") or {}).get("experiment") or {}
        kwargs = experiment.get("create_experiment_kwargs") or {}
        prepare_sqlite_store(uri, experiment.get("name"), kwargs.get("artifact_location"))


class NodeTimingHook:
    """Per-node wall times into the ``node_timings`` dataset (JSON), saved after every node.

    The file keeps the latest timing of every node it has seen, so that a flow run stage by
    stage still shows all its nodes; each entry names the run it comes from (``run``: its start
    time and session id), and ``runs`` holds each run's pipeline, node count and total wall time.
    It is written before the first node as well, so a node that reads it (the report) always
    finds it. Catalogs without a ``node_timings`` entry are left alone.
    """

    DATASET = "node_timings"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._catalog: Any = None
        self._doc: dict = {}
        self._run: dict = {}
        self._started: dict[str, float] = {}
        self._t0 = 0.0

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        import time
        from datetime import UTC, datetime

        with self._lock:
            self._catalog = catalog if _declares(catalog, self.DATASET) else None
            if self._catalog is None:
                return
            self._t0 = time.perf_counter()
            self._run = {
                "id": str((run_params or {}).get("session_id") or (run_params or {}).get("run_id")),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "pipeline": (run_params or {}).get("pipeline_names")
                or (run_params or {}).get("pipeline_name")
                or "__default__",
                "nodes": len(pipeline.nodes),
            }
            self._doc = self._previous()
            self._doc.setdefault("runs", {})[self._run["id"]] = dict(self._run)
            self._doc["latest_run"] = self._run["id"]
            self._save()

    @hook_impl
    def before_node_run(self, node) -> None:
        import time

        with self._lock:
            self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node) -> None:
        self._record(node, "ok")

    @hook_impl
    def on_node_error(self, error, node) -> None:
        self._record(node, "failed")

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        import time

        with self._lock:
            if self._catalog is None:
                return
            run = self._doc.setdefault("runs", {}).setdefault(self._run["id"], dict(self._run))
            run["wall_s"] = round(time.perf_counter() - self._t0, 2)
            self._save()

    def _record(self, node, status: str) -> None:
        import time
        from datetime import UTC, datetime

        with self._lock:
            start = self._started.pop(node.name, None)
            if self._catalog is None or start is None:
                return
            self._doc.setdefault("nodes", {})[node.name] = {
                "wall_s": round(time.perf_counter() - start, 3),
                "started_s": round(start - self._t0, 3),  # since the run started
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "status": status,
                "run": self._run["id"],
            }
            self._save()

    def _previous(self) -> dict:
        try:
            if self._catalog is not None and self._catalog.exists(self.DATASET):
                doc = self._catalog.load(self.DATASET)
                if isinstance(doc, dict) and isinstance(doc.get("nodes"), dict):
                    return doc
        except Exception as exc:  # an unreadable old file is replaced, never fatal
            logger.info("node_timings: starting afresh (%s)", exc)
        return {"nodes": {}, "runs": {}}

    def _save(self) -> None:
        try:
            self._catalog.save(self.DATASET, self._doc)
        except Exception as exc:  # timing is a report, never a reason to fail a run
            logger.warning("node_timings could not be saved: %s", exc)


def _declares(catalog, name: str) -> bool:
    try:
        return name in catalog
    except Exception:
        return False


def prepare_sqlite_store(
    uri: str, experiment: str | None = None, artifact_location: str | None = None
) -> None:
    """Create the tables of the sqlite MLflow store at ``uri`` (and ``experiment``), once, under
    an exclusive lock shared by every process that uses the same file."""
    import mlflow

    path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(path.with_name(path.name + ".lock")):
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # builds the store: creates and migrates tables
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=artifact_location)


@contextmanager
def _exclusive_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_file`` between processes (``fcntl``; none where it is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def damaged_message(name: str, error: BaseException, catalog=None) -> str:
    """One line: the artifact, where it is, the root cause, and the command that rebuilds it."""
    stage = _producing_stages().get(name)
    where = _describe(catalog, name) if catalog is not None else "catalog entry"
    fix = (
        f"Rebuild it with `kedro run --pipeline={stage}`."
        if stage
        else "It is not made by any stage: restore it."
    )
    return (
        f"Artifact '{name}' ({where}) exists but cannot be read, it is damaged "
        f"(truncated, empty or not the expected format): {root_cause(error)}. {fix}"
    )


def root_cause(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of the exception that says what went wrong, on one line, shortened.

    Follows the cause chain (``raise ... from``, and implicit contexts unless suppressed) to the
    innermost exception, but stops at a ``DatasetError`` a dataset raised with its own words: it
    names the file and the problem better than the library error beneath it.
    """
    from kedro.io.core import DatasetError

    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DatasetError) and "Failed while" not in str(error):
            break
        nxt = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if nxt is None:
            break
        error = nxt
    text = " ".join(str(error).split()) or "no message"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _producing_stages() -> dict[str, str]:
    """Which stage writes each artifact.

    Built from the stage modules themselves: Kedro 1.7 loads only the requested pipelines
    into ``kedro.framework.project.pipelines``, so the producers would be invisible there.
    """
    import importlib

    from leader_kedro.pipeline_registry import STAGES

    # the score pipeline reads the champion from the MLflow registry, where distill puts it
    producers: dict[str, str] = {"leader_student_champion": "distill"}
    for stage in STAGES:
        module = importlib.import_module(f"leader_kedro.pipelines.{stage}.pipeline")
        for output in module.create_pipeline().all_outputs():
            producers.setdefault(output, stage)
    return producers


def _describe(catalog, name: str) -> str:
    """The dataset's file path (a wrapped dataset's, e.g. ``CachedDataset``), else its type."""
    try:
        dataset = catalog.get(name) if hasattr(catalog, "get") else catalog._get_dataset(name)
        inner = getattr(dataset, "_dataset", None) or dataset
        filepath = getattr(inner, "_filepath", None)
        return str(filepath) if filepath is not None else type(dataset).__name__
    except Exception:  # describing is best effort; the name is the message
        return "catalog entry"
