"""Teacher vs student inference efficiency on the same device and the same test samples.

What is measured (the LEADER code only printed "time per sample"; see docs/method.md §5):

- **latency** per sample at batch 1: p50 and p95 over a fixed subset (the first
  ``latency_samples`` test samples), each call timed end to end from input (prompt text for the
  teacher, the sample row for the student) to probabilities, after ``warmup`` untimed calls;
- **throughput** at a fixed batch size (samples/s) over the first ``throughput_samples`` samples;
- **peak memory**: ``torch.cuda.max_memory_allocated`` growth on a GPU; on a CPU the peak growth of
  the process RSS (sampled by a background thread every ~2 ms) above the level before the call;
- **parameter counts** and the ratios teacher/student.

``main(argv)`` is what ``python -m leader_kedro.bench efficiency`` runs: it loads the trained
``teacher_model``/``student_model``/``prompts_test``/``samples_test`` from the project catalog and
prints the table. Figures are benchmarks to print, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.torch_threads import torch_threads

logger = logging.getLogger(__name__)


class PeakRss:
    """Context manager: peak RSS growth (bytes) of this process over the block, polled in a thread."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        import psutil

        self.baseline = psutil.Process().memory_info().rss
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)


def _device_of(module) -> str:
    try:
        return str(next(module.parameters()).device)
    except StopIteration:  # pragma: no cover - a model always has parameters
        return "cpu"


def weight_bytes(module) -> int:
    """Bytes held by the parameters and buffers of a module (the resident model size)."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return int(params + buffers)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_memory(fn: Callable[[], Any], device: str) -> tuple[int, str]:
    """Run ``fn`` once and return (peak growth in bytes, what was measured)."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before), "cuda_max_allocated_growth"
    with PeakRss() as rss:
        fn()
    return int(rss.growth), "rss_peak_growth"


def _latencies(
    call: Callable[[int], Any], indices: Sequence[int], warmup: int, device: str
) -> np.ndarray:
    for i in list(indices)[: max(0, warmup)]:
        call(i)
    times = []
    for i in indices:
        _sync(device)
        t0 = time.perf_counter()
        call(i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def _throughput(
    call: Callable[[], Any], n: int, device: str, warmup: bool, min_seconds: float = 0.0
) -> float:
    """Samples/s of ``call`` (``n`` samples per call), repeated until ``min_seconds`` have passed."""
    if warmup:
        call()
    _sync(device)
    calls = 0
    t0 = time.perf_counter()
    while True:
        call()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
    return float(n * calls / elapsed) if elapsed > 0 else float("inf")


def measure_one(
    name: str,
    predict: Callable[[list[int], int], Any],
    n_parameters: int,
    device: str,
    n_available: int,
    batch_sizes: Sequence[int] = (1, 32),
    latency_samples: int = 64,
    throughput_samples: int = 256,
    warmup: int = 3,
    weights: int | None = None,
    cycle: bool = False,
    min_seconds: float = 0.0,
    memory: bool = True,
) -> dict[str, Any]:
    """Latency at batch 1, throughput at every batch size, peak memory, parameters.

    ``predict(indices, batch_size)`` must compute the predictions of those samples. With
    ``cycle`` the throughput samples wrap around the available ones (a batch of 256 from a split
    of 138 samples); each throughput is repeated until ``min_seconds`` have passed.
    """
    if n_available == 0:
        raise ValueError(f"efficiency: no test samples to measure {name} on")
    lat_idx = list(range(min(latency_samples, n_available)))
    n_thr = throughput_samples if cycle else min(throughput_samples, n_available)
    thr_idx = [i % n_available for i in range(n_thr)]
    lat = _latencies(lambda i: predict([i], 1), lat_idx, warmup, device)
    out: dict[str, Any] = {
        "model": name,
        "device": device,
        "n_parameters": int(n_parameters),
        "weight_bytes": weights,
        "latency_samples": len(lat_idx),
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(lat, 95) * 1e3),
        "latency_ms_mean": float(lat.mean() * 1e3),
        "throughput_samples": len(thr_idx),
        "throughput": {},
        "peak_memory_bytes": {},
    }
    for bs in batch_sizes:
        bs = int(bs)
        out["throughput"][str(bs)] = _throughput(
            partial(predict, thr_idx, bs), len(thr_idx), device, warmup > 0, min_seconds
        )
        if memory:
            mem, kind = _peak_memory(partial(predict, thr_idx[: max(bs, 1)], bs), device)
            out["peak_memory_bytes"][str(bs)] = mem
            out["memory_measure"] = kind
    return out


class RowSubsets:
    """Row subsets of a frame, cut once and reused, so that a timed call measures the model and
    not the slicing of the benchmark's own input (every single row is cut up front)."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.cache: dict[tuple[int, ...], pd.DataFrame] = {
            (i,): frame.iloc[[i]] for i in range(len(frame))
        }

    def __call__(self, idx: Sequence[int]) -> pd.DataFrame:
        key = tuple(int(i) for i in idx)
        rows = self.cache.get(key)
        if rows is None:
            rows = self.cache[key] = self.frame.iloc[list(key)]
        return rows


def service_records(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """Contract samples as the registered model's request records (``PatientRecord`` fields, a
    missing profile value as ``None``), in the samples' order."""
    from leader_kedro.student.service import RECORD_FIELDS
    from leader_kedro.student.serving import serving_records

    frame = serving_records(samples)
    fields = [f for f in RECORD_FIELDS if f in frame.columns]
    return [
        {
            f: (None if isinstance(v, float) and v != v else v)
            for f, v in zip(fields, row, strict=True)
        }
        for row in frame[fields].itertuples(index=False, name=None)
    ]


def student_predictors(bundle, samples: pd.DataFrame) -> dict[str, Callable[[list[int], int], Any]]:
    """The student's two serving paths as ``predict(indices, batch_size)`` callables:

    - ``module``: sample rows -> probabilities (``StudentBundle.predict_proba``, encoding included);
    - ``pyfunc``: patient records -> recommendations, the registered model's own ``predict``
      (:class:`~leader_kedro.student.service.LeaderStudentService`, without MLflow's input
      check), one request per ``batch_size`` records.
    """
    from leader_kedro.student.service import LeaderStudentService, PatientRecord

    # what MLflow hands the model after its input check: validated PatientRecord objects
    rows = RowSubsets(samples)
    records = [PatientRecord(**r) for r in service_records(samples)]
    service = LeaderStudentService()
    service.bundle = bundle
    return {
        "module": lambda idx, bs: bundle.predict_proba(rows(idx), batch_size=bs),
        "pyfunc": lambda idx, bs: [
            service.predict(None, [records[i] for i in idx[s : s + bs]])
            for s in range(0, len(idx), bs)
        ],
    }


def ratios(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, float | None]:
    """Teacher/student for costs (latency, memory, parameters), student/teacher for throughput.

    Memory ratios compare weights + peak growth during one batch (what the process needs to serve).
    """

    def div(a, b):
        return float(a / b) if a is not None and b not in (None, 0) else None

    out: dict[str, float | None] = {
        "latency_p50": div(teacher["latency_ms_p50"], student["latency_ms_p50"]),
        "latency_p95": div(teacher["latency_ms_p95"], student["latency_ms_p95"]),
        "parameters": div(teacher["n_parameters"], student["n_parameters"]),
        "weight_bytes": div(teacher.get("weight_bytes"), student.get("weight_bytes")),
    }
    for bs, value in student["throughput"].items():
        out[f"throughput_b{bs}"] = div(value, teacher["throughput"].get(bs))
    for bs, value in teacher["peak_memory_bytes"].items():
        # resident weights + peak growth during one batch: RSS growth of a tiny student is often 0
        t_total = (teacher.get("weight_bytes") or 0) + value
        s_total = (student.get("weight_bytes") or 0) + student["peak_memory_bytes"].get(bs, 0)
        out[f"peak_memory_b{bs}"] = div(t_total, max(s_total, 1024))
    return out


def measure(
    teacher_bundle,
    student_bundle,
    prompts_test: pd.DataFrame,
    samples_test: pd.DataFrame,
    batch_sizes: Sequence[int] = (1, 32),
    latency_samples: int = 64,
    throughput_samples: int = 256,
    warmup: int = 3,
    num_threads: int | None = None,
    teacher_threads: int | None = None,
    student_threads: int | None = None,
) -> dict[str, Any]:
    """Measure the teacher (``TeacherBundle.predict_proba`` on prompt texts) and the student
    (``StudentBundle.predict_proba`` on sample rows) on the same test samples; see the module doc."""
    import torch

    default_threads = int(num_threads or torch.get_num_threads())
    t_threads = int(teacher_threads or default_threads)
    s_threads = int(student_threads or default_threads)
    if "prompt" not in prompts_test.columns:
        raise ValueError("prompts_test: column 'prompt' is missing (expected the prompts contract)")
    ids_p = prompts_test["sample_id"].astype(str).tolist()
    ids_s = samples_test["sample_id"].astype(str).tolist()
    if ids_p != ids_s:
        raise ValueError(
            "prompts_test and samples_test are not in the same row order / sample ids; "
            "re-run `kedro run --pipeline=prompts`"
        )
    texts = prompts_test["prompt"].tolist()
    n = len(texts)
    t_dev = _device_of(teacher_bundle.model)
    s_dev = _device_of(student_bundle.module)
    with torch.inference_mode(), torch_threads(t_threads):
        teacher = measure_one(
            "teacher",
            lambda idx, bs: teacher_bundle.predict_proba([texts[i] for i in idx], batch_size=bs),
            teacher_bundle.n_parameters,
            t_dev,
            n,
            batch_sizes,
            latency_samples,
            throughput_samples,
            warmup,
            weight_bytes(teacher_bundle.model),
        )
    with torch.inference_mode(), torch_threads(s_threads):
        student = measure_one(
            "student",
            student_predictors(student_bundle, samples_test)["module"],
            student_bundle.n_parameters,
            s_dev,
            n,
            batch_sizes,
            latency_samples,
            throughput_samples,
            warmup,
            weight_bytes(student_bundle.module),
        )
    teacher["torch_threads"], student["torch_threads"] = t_threads, s_threads
    backbone = getattr(teacher_bundle, "config", {}).get("backbone", "teacher")
    return {
        "teacher": teacher,
        "student": student,
        "ratios": ratios(teacher, student),
        "same_device": t_dev == s_dev,
        "teacher_backbone": backbone,
        "torch_threads": {"teacher": t_threads, "student": s_threads},
        "batch_sizes": [int(b) for b in batch_sizes],
        "test_samples": n,
    }


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of a ``measure`` result (also used by the markdown report)."""
    t, s, r = result["teacher"], result["student"], result["ratios"]
    rows = [
        ("device", t["device"], s["device"], ""),
        ("torch threads", t.get("torch_threads", ""), s.get("torch_threads", ""), ""),
        ("parameters", f"{t['n_parameters']:,}", f"{s['n_parameters']:,}", _x(r["parameters"])),
        (
            "weights (MiB)",
            _mib(t.get("weight_bytes")),
            _mib(s.get("weight_bytes")),
            _x(r.get("weight_bytes")),
        ),
        (
            "latency p50 (ms, batch 1)",
            f"{t['latency_ms_p50']:.2f}",
            f"{s['latency_ms_p50']:.2f}",
            _x(r["latency_p50"]),
        ),
        (
            "latency p95 (ms, batch 1)",
            f"{t['latency_ms_p95']:.2f}",
            f"{s['latency_ms_p95']:.2f}",
            _x(r["latency_p95"]),
        ),
    ]
    for bs in t["throughput"]:
        rows.append(
            (
                f"throughput (samples/s, batch {bs})",
                f"{t['throughput'][bs]:.1f}",
                f"{s['throughput'][bs]:.1f}",
                _x(r.get(f"throughput_b{bs}")),
            )
        )
    for bs in t["peak_memory_bytes"]:
        rows.append(
            (
                f"peak growth (MiB, {t.get('memory_measure', '')}, batch {bs})",
                f"{t['peak_memory_bytes'][bs] / 2**20:.1f}",
                f"{s['peak_memory_bytes'][bs] / 2**20:.2f}",
                "",
            )
        )
        rows.append(
            (
                f"weights + peak growth (MiB, batch {bs})",
                _mib((t.get("weight_bytes") or 0) + t["peak_memory_bytes"][bs]),
                _mib((s.get("weight_bytes") or 0) + s["peak_memory_bytes"][bs]),
                _x(r.get(f"peak_memory_b{bs}")),
            )
        )
    head = ("", "teacher", "student", "ratio")
    widths = [max(len(str(row[k])) for row in [head, *rows]) for k in range(4)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        for row in [head, *rows]
    ]
    return "\n".join(lines)


def _mib(value) -> str:
    return f"{value / 2**20:.2f}" if value is not None else "n/a"


def _x(value) -> str:
    return f"{value:.1f}x" if value is not None else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leader_kedro.bench efficiency [--env local] [--latency-samples 64] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m leader_kedro.bench efficiency",
        description="Teacher vs student latency/throughput/memory on the trained artifacts of the project.",
    )
    parser.add_argument(
        "--env", default=None, help="Kedro environment (default: the project default)"
    )
    parser.add_argument("--latency-samples", type=int, default=None)
    parser.add_argument("--throughput-samples", type=int, default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (both)")
    parser.add_argument("--teacher-threads", type=int, default=None)
    parser.add_argument("--student-threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from pathlib import Path

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.utils import find_kedro_project

    root = find_kedro_project(Path.cwd()) or Path(__file__).resolve().parents[3]
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=args.env) as session:
        context = session.load_context()  # type: ignore[attr-defined]
        catalog = context.catalog
        from leader_kedro.evaluation.protocols import evaluate_config

        p = evaluate_config(context.params.get("evaluate")).efficiency
        names = ("teacher_model", "student_model", "prompts_test", "samples_test")
        missing = [name for name in names if not catalog.exists(name)]
        if missing:
            raise SystemExit(
                f"efficiency needs {missing}: run `kedro run` (or the teacher/distill pipelines) first"
            )
        teacher, student, prompts, samples = (catalog.load(name) for name in names)
    result = measure(
        teacher,
        student,
        prompts,
        samples,
        batch_sizes=args.batch_sizes or p.batch_sizes,
        latency_samples=args.latency_samples or p.latency_samples,
        throughput_samples=args.throughput_samples or p.throughput_samples,
        warmup=args.warmup if args.warmup is not None else p.warmup,
        num_threads=args.threads or p.num_threads,
        teacher_threads=args.teacher_threads or p.teacher_threads,
        student_threads=args.student_threads or p.student_threads,
    )
    print(
        f"teacher backbone: {result['teacher_backbone']}; test samples: {result['test_samples']}; torch threads: {result['torch_threads']}"
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
