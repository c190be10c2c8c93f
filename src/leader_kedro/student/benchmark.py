"""``python -m leader_kedro.bench student``: the student's training and inference speed.

Before and after, side by side in one process on the same data and the same weights: "before" is
``student/legacy.py`` (the student as it was before issue 10), "after" the current code.

- training: samples/s of the training loop (batching, forward, backward, Adam; no validation) of
  one student on one thread at the configured batch size, and of ``--workers`` students trained
  side by side (:func:`training.train_students`, whole pool wall time, validation and start-up
  included); when the configured batch is not the old loop's 16, one student at batch 16 too
  (like for like with the before column);
- inference, through the paths a user takes, with :func:`evaluation.efficiency.measure_one` (the
  code of the evaluate stage's efficiency table): latency p50/p95 at batch 1 and throughput at
  batches 1, 32 and 256 (test samples cycled to fill a batch of 256) of

  - ``module``: sample rows -> probabilities (``StudentBundle.predict_proba``),
  - ``pyfunc``: patient records -> ranked ATC-3 classes, the registered model's own ``predict``
    (after: ``LeaderStudentService``, the typed model ``register_student`` registers; before: the
    column-based pyfunc that was registered then),
  - ``mlflow``: that model saved and loaded back with ``mlflow.pyfunc``: its ``predict`` checks
    the input first (after: pydantic records; before: the column signature), as
    ``models:/leader-student`` does.

Data: ``samples_{train,val,test}``, ``vocab``, ``code_names`` and (when present)
``teacher_features_train`` from the project's catalog; without the features the KD student trains
on random features of the teacher's width (the speed does not depend on their values). Figures
are printed (and written with ``--json``), never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

#: The batch size of the training loop before issue 10 (``legacy.train_epochs``).
LEGACY_BATCH = 16


def _load_inputs(env: str | None) -> dict[str, Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.utils import find_kedro_project

    root = find_kedro_project(Path.cwd()) or Path(__file__).resolve().parents[3]
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env) as session:
        context = session.load_context()  # type: ignore[attr-defined]
        catalog = context.catalog
        names = ("samples_train", "samples_val", "samples_test", "vocab", "code_names")
        missing = [name for name in names if not catalog.exists(name)]
        if missing:
            raise SystemExit(
                f"the student benchmark needs {missing}: run `kedro run --pipeline=ingest` first"
            )
        data = {name: catalog.load(name) for name in names}
        data["teacher_features"] = (
            catalog.load("teacher_features_train")
            if catalog.exists("teacher_features_train")
            else None
        )
        data["params"] = context.params.get("distill") or {}
    return data


def _features(data: dict, width: int) -> tuple[dict, str]:
    if data["teacher_features"] is not None:
        return data["teacher_features"], "teacher_features_train"
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = [str(s) for s in data["samples_train"]["sample_id"]]
    hidden = torch.randn(len(ids), width, generator=gen).to(torch.float16)
    from leader_kedro.teacher.features import standardisation_stats

    # with their train statistics, as the features stage writes them (distill.kd.standardise)
    metadata = {"standardisation": standardisation_stats(hidden)}
    return {"sample_ids": ids, "hidden": hidden, "metadata": metadata}, (
        f"random features of width {width}"
    )


# ------------------------------------------------------------------------------------ training
def training_after(cfg, data: dict, features: dict, epochs: int, workers: int) -> dict[str, Any]:
    """Samples/s of the current training loop: one student in-process, then ``workers`` side by
    side (aggregate over the pool's wall time)."""
    from leader_kedro.student.training import fit, prepare, train_students

    tr = replace(cfg.training, max_epochs=epochs, patience=epochs + 1, progress=False)
    cfg = replace(cfg, training=tr)
    if not (features.get("metadata") or {}).get("standardisation"):
        # random features, or a cache made before the statistics were stored: the raw rows (the
        # standardisation is one subtraction and division, made once per run: no speed effect)
        cfg = replace(cfg, kd=replace(cfg.kd, standardise=False))
    prepared = prepare(
        cfg, data["samples_train"], data["samples_val"], data["vocab"], features, None
    )
    n = len(prepared.train)
    _, info = fit(cfg, prepared, "main")
    out: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": tr.batch_size,
        "train_samples": n,
        "samples_per_s": info["train_samples_per_second"],
        "samples_per_s_with_validation": round(n * epochs / info["train_seconds"], 1),
    }
    if workers > 1:
        pool_cfg = replace(cfg, training=replace(tr, workers=workers, n_seeds=workers))
        t0 = time.perf_counter()
        runs = train_students(pool_cfg, prepared, variants=("main",))
        wall = time.perf_counter() - t0
        out["side_by_side"] = {
            "workers": workers,
            "per_student_samples_per_s": [r.info["train_samples_per_second"] for r in runs],
            "aggregate_samples_per_s": round(n * epochs * len(runs) / wall, 1),
            "wall_s": round(wall, 2),
        }
    return out


def training_before(model_cfg: dict, data: dict, features: dict, epochs: int) -> dict[str, Any]:
    """Samples/s of the pre-issue-10 training loop (collate per batch), one thread."""
    import torch

    from leader_kedro.contracts import aligned_teacher_features
    from leader_kedro.student import legacy
    from leader_kedro.torch_threads import torch_threads

    samples = data["samples_train"]
    enc = legacy.encode_samples(
        samples, data["vocab"], model_cfg["max_visits"], model_cfg["max_codes"]
    )
    hidden = aligned_teacher_features(features, [str(s) for s in samples["sample_id"]])
    torch.manual_seed(0)
    module = legacy.LeaderStudent(model_cfg)
    with torch_threads(1):
        seconds = legacy.train_epochs(module, enc, hidden, epochs)
    return {
        "epochs": epochs,
        "train_samples": len(samples),
        "samples_per_s": round(len(samples) * epochs / seconds, 1),
    }


# ----------------------------------------------------------------------------------- inference
def signature_of(bundle, example: pd.DataFrame):
    """The old column-based pyfunc's signature (profile fields and top_k optional), as it was
    registered before the typed ``LeaderStudentService``: the "before" MLflow row."""
    from mlflow.models import infer_signature

    from leader_kedro.student.serving import LeaderStudentPyfunc, _optional_profile

    reference = LeaderStudentPyfunc(top_k=10)
    reference.bundle = bundle
    return _optional_profile(infer_signature(example, reference.predict(None, example)))


def _saved_pyfunc(python_model, bundle, signature, where: Path):
    """``mlflow.pyfunc.save_model`` + ``load_model`` of the old column-based pyfunc, with the
    signature it was registered with: the served model of before, with its input check."""
    import mlflow

    from leader_kedro.student.model import save_bundle

    artifacts = where / "artifacts" / "student_model"
    save_bundle(bundle, artifacts)
    path = where / "model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=python_model,
        artifacts={"student_model": str(artifacts)},
        signature=signature,
    )
    return mlflow.pyfunc.load_model(str(path))


def _saved_service(bundle, where: Path):
    """The registered model as ``register_student`` logs it (``LeaderStudentService``: typed
    records in, MLflow's pydantic input check), saved and loaded through ``mlflow.pyfunc``."""
    import mlflow

    from leader_kedro.student.model import save_bundle
    from leader_kedro.student.registry import example_patients
    from leader_kedro.student.service import DDI_FILE, LeaderStudentService

    artifacts = where / "artifacts"
    save_bundle(bundle, artifacts / "student_model")
    (artifacts / DDI_FILE).write_text(json.dumps({"pairs": []}))
    path = where / "model"
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=LeaderStudentService(top_k=10),
        artifacts={
            "student_model": str(artifacts / "student_model"),
            "ddi_pairs": str(artifacts / DDI_FILE),
        },
        input_example=example_patients(bundle.vocab),
    )
    return mlflow.pyfunc.load_model(str(path))


def predictors(
    bundle, samples: pd.DataFrame, implementation: str, workdir: Path, signature=None
) -> dict[str, Any]:
    """``predict(indices, batch_size)`` of the module, the registered model's own ``predict``
    (``pyfunc``) and, with ``workdir``, the same model through ``mlflow.pyfunc.load_model`` with
    MLflow's input check (``mlflow``) of one implementation. ``after``: the current code, whose
    registered model is ``LeaderStudentService``; ``before``: student/legacy.py and the
    column-based pyfunc that was registered then (it needs ``signature`` for its MLflow row)."""
    from leader_kedro.evaluation.efficiency import (
        RowSubsets,
        service_records,
        student_predictors,
    )
    from leader_kedro.student import legacy
    from leader_kedro.student.serving import serving_records

    if implementation == "after":
        paths = student_predictors(bundle, samples)
        if workdir is not None and signature is not None:
            served = _saved_service(bundle, workdir)
            records = service_records(samples)
            paths["mlflow"] = lambda idx, bs: [
                served.predict([records[i] for i in idx[s : s + bs]])
                for s in range(0, len(idx), bs)
            ]
        return paths
    rows, requests = RowSubsets(samples), RowSubsets(serving_records(samples))
    module, vocab, names, config = bundle.module, bundle.vocab, bundle.code_names, bundle.config
    paths = {
        "module": lambda idx, bs: legacy.predict_proba(
            module, vocab, config, rows(idx), batch_size=bs
        ),
        "pyfunc": lambda idx, bs: [
            legacy.pyfunc_predict(module, vocab, names, config, requests(idx[s : s + bs]))
            for s in range(0, len(idx), bs)
        ],
    }
    if signature is not None:
        served = _saved_pyfunc(legacy.LegacyPyfunc(top_k=10), bundle, signature, workdir)
        paths["mlflow"] = lambda idx, bs: [
            served.predict(requests(idx[s : s + bs])) for s in range(0, len(idx), bs)
        ]
    return paths


def inference(
    paths: dict[str, Any],
    n_parameters: int,
    n_samples: int,
    batch_sizes: Sequence[int],
    latency_samples: int,
    throughput_samples: int,
    min_seconds: float,
    name: str,
) -> dict[str, Any]:
    """Latency and throughput of one path (:func:`evaluation.efficiency.measure_one`)."""
    import torch

    from leader_kedro.evaluation.efficiency import measure_one

    with torch.inference_mode() if name.endswith("module") else nullcontext():
        return measure_one(
            name,
            paths[name.split(":")[1]],
            n_parameters,
            "cpu",
            n_samples,
            batch_sizes,
            latency_samples,
            throughput_samples,
            warmup=3,
            cycle=True,
            min_seconds=min_seconds,
            memory=False,
        )


# --------------------------------------------------------------------------------------- main
def cpu_model() -> str:
    """The CPU's model name as Linux reports it (empty elsewhere): figures depend on it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _table(result: dict[str, Any]) -> str:
    before, after = result.get("before", {}), result["after"]

    def fmt(v, digits=1):
        return "n/a" if v is None else f"{v:,.{digits}f}"

    def ratio(b, a, higher_is_better=True):
        if a is None or b is None or a == 0 or b == 0:
            return ""
        return f"{(a / b) if higher_is_better else (b / a):.1f}x"

    rows = []
    tb, ta = before.get("training", {}), after["training"]
    same = after.get("training_at_legacy_batch")
    if same:  # the configured batch differs from the old one: also the like-for-like figure
        rows.append(
            (
                f"training samples/s (1 student, 1 thread, batch {LEGACY_BATCH} as before)",
                fmt(tb.get("samples_per_s")),
                fmt(same["samples_per_s"]),
                ratio(tb.get("samples_per_s"), same["samples_per_s"]),
            )
        )
    rows.append(
        (
            f"training samples/s (1 student, 1 thread, batch {ta.get('batch_size', '?')})",
            fmt(tb.get("samples_per_s")),
            fmt(ta["samples_per_s"]),
            ratio(tb.get("samples_per_s"), ta["samples_per_s"]),
        )
    )
    side = ta.get("side_by_side")
    if side:
        rows.append(
            (
                f"training samples/s ({side['workers']} students side by side, aggregate)",
                "",
                fmt(side["aggregate_samples_per_s"]),
                ratio(tb.get("samples_per_s"), side["aggregate_samples_per_s"]),
            )
        )
    for path in ("module", "pyfunc", "mlflow"):
        if path not in after["inference"]:
            continue
        a = after["inference"][path]
        b = (before.get("inference") or {}).get(path, {})
        for key, label in (("latency_ms_p50", "p50"), ("latency_ms_p95", "p95")):
            rows.append(
                (
                    f"{path}: latency {label} (ms, batch 1)",
                    fmt(b.get(key), 3),
                    fmt(a[key], 3),
                    ratio(b.get(key), a[key], higher_is_better=False),
                )
            )
        for bs, value in a["throughput"].items():
            old = (b.get("throughput") or {}).get(bs)
            rows.append(
                (
                    f"{path}: throughput (samples/s, batch {bs})",
                    fmt(old),
                    fmt(value),
                    ratio(old, value),
                )
            )
    head = ("", "before", "after", "speed-up")
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(4)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leader_kedro.bench student",
        description="The student's training and inference speed, before (student/legacy.py) and "
        "after, side by side.",
    )
    parser.add_argument("--env", default=None, help="Kedro environment (default: the project's)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="training epochs timed per student (default 10: a distill run's students train "
        "16-24; with fewer the pool's start-up weighs more than in a real run)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="students trained side by side (one per core)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--latency-samples", type=int, default=64)
    parser.add_argument("--throughput-samples", type=int, default=256)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="per throughput figure")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the process (default 1, the evaluate stage's student "
        "setting; 0 = torch's default). The current student always computes on one intra-op "
        "thread and splits large requests over one thread per core; the old one used this "
        "setting as it was.",
    )
    parser.add_argument("--no-before", action="store_true", help="skip the legacy student")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the mlflow.pyfunc path")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(list(argv) if argv is not None else None)

    import torch

    from leader_kedro.student import kernels, legacy
    from leader_kedro.student.model import LeaderStudent, StudentBundle
    from leader_kedro.student.training import distill_config, model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    data = _load_inputs(args.env)
    cfg = distill_config(data["params"])
    width = 384
    features, features_from = _features(data, width)
    width = int(features["hidden"].shape[1])
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": cpu_model() or platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "features": features_from,
        "samples": {k: len(data[f"samples_{k}"]) for k in ("train", "val", "test")},
    }
    print(
        f"student benchmark {result['date']}: {result['samples']} samples, torch "
        f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, load average "
        f"{load_before[0]:.2f}",
        flush=True,
    )
    choice = kernels.chosen()
    result["machine"]["linear_gelu"] = {"chosen": choice.name, "seconds": choice.seconds}
    print(
        f"{result['machine']['processor']}; inference linear + GELU: {choice.name} ("
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in choice.seconds.items())
        + " per [512, 64] -> [512, 300] call)",
        flush=True,
    )
    mcfg = model_config(cfg, data["vocab"], width)
    if not args.no_before:
        result["before"] = {"training": training_before(mcfg, data, features, args.epochs)}
        print(f"before, training: {result['before']['training']}", flush=True)
    result["after"] = {"training": training_after(cfg, data, features, args.epochs, args.workers)}
    print(f"after, training: {result['after']['training']}", flush=True)
    if cfg.training.batch_size != LEGACY_BATCH:
        legacy_batch = replace(cfg, training=replace(cfg.training, batch_size=LEGACY_BATCH))
        result["after"]["training_at_legacy_batch"] = training_after(
            legacy_batch, data, features, args.epochs, workers=1
        )
        print(f"after, batch {LEGACY_BATCH}: {result['after']['training_at_legacy_batch']}")
    # one set of weights for both implementations (their parameter names are the same)
    torch.manual_seed(0)
    reference = legacy.LeaderStudent(mcfg).eval()
    current = LeaderStudent(mcfg)
    current.load_state_dict(reference.state_dict())
    implementations = {"after": StudentBundle(current, mcfg, data["vocab"], data["code_names"])}
    if not args.no_before:
        implementations["before"] = StudentBundle(current, mcfg, data["vocab"], data["code_names"])
        implementations["before"].module = reference  # type: ignore[assignment]
    samples = data["samples_test"].reset_index(drop=True)
    signature = None
    if not args.no_mlflow:
        from leader_kedro.student.serving import serving_example

        signature = signature_of(implementations["after"], serving_example(samples))
    with tempfile.TemporaryDirectory(prefix="bench_student_") as tmp:
        paths = {}
        for name, bundle in implementations.items():
            (Path(tmp) / name).mkdir()
            paths[name] = predictors(bundle, samples, name, Path(tmp) / name, signature)
        # path by path, the two implementations back to back (the load of a shared machine drifts)
        for path in paths["after"]:
            for name in implementations:
                result[name].setdefault("inference", {})[path] = inference(
                    paths[name],
                    implementations[name].n_parameters,
                    len(samples),
                    args.batch_sizes,
                    args.latency_samples,
                    args.throughput_samples,
                    args.min_seconds,
                    f"{name}:{path}",
                )
            print(f"inference, {path}: done", flush=True)
    load_after = os.getloadavg()
    result["load_average"] = {"before": list(load_before), "after": list(load_after)}
    result["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    print(_table(result))
    print(
        f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
        f"{tuple(round(x, 2) for x in load_after)}; {result['seconds']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
        print(f"written {args.json}")
    return 0


__all__ = ["inference", "main", "predictors", "training_after", "training_before"]
