"""The ingest benchmark through Kedro: ``python -m leader_kedro.bench ingest --kedro``.

Runs the ``ingest`` pipeline, exactly as ``kedro run --pipeline=ingest --params
synthetic.n_patients=N`` does (same session, runner, catalog, hooks and MLflow tracking), in a
throw-away copy of the project, and collects each stage's wall time and peak memory: the stages
the nodes log (generate, read, map, visits, vocab, split, samples, oracle) and the catalog's
writes and loads between them (``CatalogIOMeterHook``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[4]


def make_project_copy(dst: Path, root: Path = PROJECT_ROOT) -> Path:
    """pyproject.toml + conf (without conf/local) and empty data/, logs/, src/ under ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "pyproject.toml", dst / "pyproject.toml")
    if (dst / "conf").exists():
        shutil.rmtree(dst / "conf")
    shutil.copytree(root / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    for sub in ("conf/local", "data", "logs", "src"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    return dst


class _StageCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rows: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        row = getattr(record, "ingest_stage", None)
        if row is not None:
            self.rows.append(row)


def run_kedro_ingest(project: Path, n_patients: int) -> dict[str, Any]:
    """Run the ``ingest`` pipeline in ``project`` for ``n_patients`` synthetic patients; returns
    the node stages, the catalog's writes and loads, and the run's wall time."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from leader_kedro.pipelines.ingest.hooks import CatalogIOMeterHook

    os.chdir(project)
    bootstrap_project(project)
    hook = CatalogIOMeterHook(log=False)
    collector = _StageCollector()
    t0 = time.perf_counter()
    with KedroSession.create(
        project_path=project, runtime_params={"synthetic": {"n_patients": int(n_patients)}}
    ) as session:
        session._hook_manager.register(hook)  # what settings.HOOKS would do, for this run only
        meter_log = logging.getLogger("leader_kedro.ingest.meter")
        meter_log.setLevel(logging.INFO)
        meter_log.addHandler(collector)
        session.run(pipeline_names=["ingest"])
    wall = time.perf_counter() - t0
    report = json.loads((project / "data/08_reporting/ingest_report.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "stages": collector.rows,
        "io": hook.meter.stages,
        "io_totals": hook.totals(),
        "cohort": {k: report["cohort"][k] for k in ("patients", "visits", "n_medications")},
        "rows_read": report["rows_read"],
    }


def main(argv: list[str]) -> int:
    """Child process: ``python -m leader_kedro.pipelines.ingest.benchmark PROJECT N``."""
    out = run_kedro_ingest(Path(argv[0]).resolve(), int(argv[1]))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
