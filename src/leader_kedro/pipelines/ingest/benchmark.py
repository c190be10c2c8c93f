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


def throughput(project: Path, n_student: int, n_teacher: int, seed: int = 0) -> dict[str, Any]:
    """The student's training and the teacher's feature extraction, in samples/s, on seeded
    subsamples of the samples the ingest wrote in ``project``.

    Student: one epoch of the current training loop (``student.benchmark.training_after``, the
    ``distill`` parameters, random teacher features of the teacher's width) on ``n_student``
    train samples (and an eighth as many val samples). Teacher: the ``teacher`` backbone with
    LoRA and head as built for training (untrained: the cost of a forward pass does not depend
    on the weights) over the prompts of ``n_teacher`` train samples, ``features.batch_size``
    prompts per pass, longest first, as the features stage does.
    """
    import numpy as np

    from leader_kedro.config import build_config
    from leader_kedro.student.benchmark import _features, _load_inputs, training_after
    from leader_kedro.student.training import distill_config
    from leader_kedro.teacher import prompts as prompting
    from leader_kedro.teacher import training as teacher_training
    from leader_kedro.teacher.model import TeacherBundle

    os.chdir(project)
    data = _load_inputs(None)
    params = _params(project)
    rng = np.random.default_rng(seed)

    def sub(df, n):
        return df.iloc[np.sort(rng.choice(len(df), min(n, len(df)), replace=False))]

    train = sub(data["samples_train"], n_student)
    tcfg = build_config(teacher_training.TeacherConfig, params["teacher"], "teacher")
    model, tokenizer, config = teacher_training._build_model(tcfg, data["vocab"]["medication"], 0)
    bundle = TeacherBundle(model, tokenizer, config)
    student_data = {
        **data,
        "samples_train": train,
        "samples_val": sub(data["samples_val"], n_student // 8),
    }
    features, _ = _features({**student_data, "teacher_features": None}, int(config["hidden_size"]))
    student = training_after(distill_config(params["distill"]), student_data, features, 1, 1)

    pcfg = prompting.PromptConfig.from_params(params["prompts"])
    name, max_length = prompting.resolve_settings(pcfg, tcfg.backbone, tcfg.max_length)
    prompts, _ = prompting.build_prompts(
        sub(train, n_teacher),
        data["code_names"],
        prompting.get_tokenizer(name),
        max_length,
        pcfg,
        pcfg.reserve_tokens,
    )
    order = np.argsort(-prompts["n_tokens"].to_numpy(), kind="stable")
    texts = prompts["prompt"].astype(str).to_numpy()[order].tolist()
    batch = int(params["features"].get("batch_size", 32))
    t0 = time.perf_counter()
    bundle.encode(texts, batch_size=batch)
    seconds = time.perf_counter() - t0
    return {
        "student_training": student,
        "teacher_features": {
            "prompts": len(texts),
            "batch_size": batch,
            "mean_tokens": round(float(prompts["n_tokens"].mean()), 1),
            "seconds": round(seconds, 2),
            "samples_per_s": round(len(texts) / seconds, 2),
            "backbone": tcfg.backbone,
        },
    }


def _params(project: Path) -> dict[str, Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        return dict(session.load_context().params)  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    """Child process: ``python -m leader_kedro.pipelines.ingest.benchmark PROJECT N`` (the
    ingest pipeline), or ``... PROJECT --throughput N_STUDENT N_TEACHER`` (after it)."""
    if argv[1] == "--throughput":
        out = throughput(Path(argv[0]).resolve(), int(argv[2]), int(argv[3]))
    else:
        out = run_kedro_ingest(Path(argv[0]).resolve(), int(argv[1]))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
