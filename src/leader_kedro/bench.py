"""Benchmarks: ``python -m leader_kedro.bench {ingest,efficiency,student} ...``.

``ingest``: write a synthetic cohort of N patients (timed on its own), then ingest it in a child
process and print the ingest wall time and its peak RSS (RUSAGE_CHILDREN, so the generator's
memory is not counted), and each stage's. ``ingest --kedro``: the ``ingest`` pipeline through
Kedro (generation included, as a stage). Target on the 2-core dev machine (issue 13): a
MIMIC-IV-sized cohort, 400k patients, in < 120 s and < 6 GiB.
``efficiency`` is forwarded to ``leader_kedro.evaluation.efficiency.main(argv)``.
``student`` is forwarded to ``leader_kedro.student.benchmark.main(argv)``: the student's training
samples/s and inference latency/throughput, before (``student/legacy.py``) and after issue 10.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _ingest_params() -> dict:
    """The base ``ingest`` parameters (conf/base/parameters_ingest.yml), read without Kedro."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    conf = root / "conf" / "base" / "parameters_ingest.yml"
    ingest = yaml.safe_load(conf.read_text())["ingest"] if conf.is_file() else {}
    split = dict(ingest.get("split") or {})
    split["seed"] = None  # the ${seed} interpolation: fall back to --seed
    return {**ingest, "split": split}


def _ingest_child(argv: list[str]) -> int:
    """Run in a fresh process: ingest raw_dir/aux_dir and write the outputs like the catalog does."""
    raw_dir, aux_dir, out_dir, seed = argv[0], argv[1], Path(argv[2]), int(argv[3])
    t0 = time.perf_counter()
    from leader_kedro.ingest.meter import StageMeter, process_peak_gib
    from leader_kedro.ingest.stage import run_ingest

    t_import = time.perf_counter() - t0
    meter = StageMeter(log=False)
    t1 = time.perf_counter()
    out = run_ingest("synthetic", raw_dir, aux_dir, _ingest_params(), seed, meter=meter)
    t_core = time.perf_counter() - t1
    with meter.stage("write"):
        out_dir.mkdir(parents=True, exist_ok=True)
        out["visits"].to_parquet(out_dir / "visits.parquet")
        for split, df in out["samples"].items():
            df.to_parquet(out_dir / f"samples_{split}.parquet")
        out["split_ids"].to_csv(out_dir / "split_ids.csv", index=False)
        out["ddi_adjacency"].to_csv(out_dir / "ddi_adjacency.csv")
        for name in ("vocab", "code_names", "report"):
            (out_dir / f"{name}.json").write_text(json.dumps(out[name], indent=1, default=str))
    t_total = time.perf_counter() - t1
    c = out["report"]["cohort"]
    print(
        json.dumps(
            {
                "import_s": round(t_import, 2),
                "core_s": round(t_core, 2),
                "core_and_write_s": round(t_total, 2),
                "patients": c["patients"],
                "visits": c["visits"],
                "n_medications": c["n_medications"],
                "rows_read": out["report"]["rows_read"],
                "stages": meter.stages,
                "peak_gib": round(process_peak_gib(), 2),
            }
        )
    )
    return 0


def bench_ingest(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m leader_kedro.bench ingest")
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--workdir", default=None, help="where the cohort is written (default: a temp dir)"
    )
    ap.add_argument(
        "--kedro",
        action="store_true",
        help="run `kedro run --pipeline=ingest --params synthetic.n_patients=N` (the pipeline, "
        "generation included, in a throw-away project copy) instead of the core in a process",
    )
    ap.add_argument(
        "--throughput",
        nargs=2,
        type=int,
        metavar=("N_STUDENT", "N_TEACHER"),
        help="with --kedro, then: the student's training and the teacher's feature extraction "
        "(samples/s) on N_STUDENT and N_TEACHER train samples of that cohort",
    )
    args = ap.parse_args(argv)
    if args.kedro:
        return _bench_ingest_kedro(args)
    from leader_kedro.synthetic import generator as synthetic

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        work = Path(args.workdir or tmp)
        raw, aux, out = work / "raw", work / "raw" / "aux", work / "out"
        t0 = time.perf_counter()
        synthetic.write_cohort(raw, aux, args.patients, args.seed)
        t_gen = time.perf_counter() - t0
        print(f"generate: {args.patients} synthetic patients written in {t_gen:.1f} s", flush=True)
        load0 = os.getloadavg()[0]  # wall time is only meaningful on an otherwise idle machine
        t1 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "leader_kedro.bench",
                "_ingest_child",
                str(raw),
                str(aux),
                str(out),
                str(args.seed),
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t1
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gib = usage.ru_maxrss / 1024**2  # KiB -> GiB
        cpu = usage.ru_utime + usage.ru_stime
        print(
            f"ingest: {child['patients']} patients, {child['visits']} visits, {child['n_medications']} meds; "
            f"wall {wall:.1f} s (process incl. imports; ingest core {child['core_s']:.1f} s, "
            f"core + writing outputs {child['core_and_write_s']:.1f} s); CPU time {cpu:.1f} s; "
            f"peak RSS {peak_gib:.2f} GiB; load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f}"
        )
        print(f"rows read: {child['rows_read']}")
        from leader_kedro.ingest.meter import stage_table

        print(stage_table(child["stages"]))
        ok = wall < 120 and peak_gib < 6
        print(f"target (< 120 s, < 6 GiB): {'met' if ok else 'NOT met'}")
    return 0


def _bench_ingest_kedro(args) -> int:
    """The ingest pipeline through Kedro in a child process; each stage's wall time and peak."""
    from leader_kedro.pipelines.ingest.benchmark import make_project_copy

    with tempfile.TemporaryDirectory(prefix="bench_ingest_kedro_") as tmp:
        return _bench_ingest_kedro_in(
            args, make_project_copy(Path(args.workdir or tmp) / "project")
        )


def _bench_ingest_kedro_in(args, project: Path) -> int:
    from leader_kedro.ingest.meter import stage_table

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "leader_kedro.pipelines.ingest.benchmark", str(project)]
        + [str(args.patients)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-5000:], file=sys.stderr)
        return proc.returncode
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss / 1024**2, usage.ru_utime + usage.ru_stime
    stages = child["stages"] + child["io_totals"]
    gen = sum(r["wall_s"] for r in stages if r["stage"] == "generate")
    c = child["cohort"]
    print(
        f"kedro run --pipeline=ingest --params synthetic.n_patients={args.patients}: "
        f"{c['patients']} patients, {c['visits']} visits, {c['n_medications']} meds"
    )
    print(f"rows read: {child['rows_read']}")
    print(stage_table(stages))
    print(
        f"process wall {wall:.1f} s (session {child['wall_s']:.1f} s; without generate "
        f"{wall - gen:.1f} s), CPU {cpu:.1f} s, peak RSS {peak:.2f} GiB; load average before "
        f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    ok = wall - gen < 120 and peak < 6
    print(f"target (< 120 s without generate, < 6 GiB): {'met' if ok else 'NOT met'}")
    if args.throughput:
        proc = subprocess.run(
            [sys.executable, "-m", "leader_kedro.pipelines.ingest.benchmark", str(project)]
            + ["--throughput", *map(str, args.throughput)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr[-5000:], file=sys.stderr)
            return proc.returncode
        thr = json.loads(proc.stdout.strip().splitlines()[-1])
        st, te = thr["student_training"], thr["teacher_features"]
        print(
            f"student training: {st['samples_per_s']} samples/s (1 epoch, {st['train_samples']} "
            f"train samples; {st['samples_per_s_with_validation']} with validation)"
        )
        print(
            f"teacher feature extraction ({te['backbone']}, untrained LoRA + head): "
            f"{te['samples_per_s']} samples/s ({te['prompts']} prompts of {te['mean_tokens']} "
            f"tokens on average, batch {te['batch_size']}); load average now "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m leader_kedro.bench {ingest,efficiency,student} [options]")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "ingest":
        return bench_ingest(rest)
    if cmd == "_ingest_child":
        return _ingest_child(rest)
    if cmd == "efficiency":
        from leader_kedro.evaluation import efficiency

        return int(efficiency.main(rest) or 0)
    if cmd == "student":
        from leader_kedro.student import benchmark

        return int(benchmark.main(rest) or 0)
    print(f"unknown benchmark {cmd!r}; expected ingest, efficiency or student", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
