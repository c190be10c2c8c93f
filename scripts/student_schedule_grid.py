"""The student's training schedule, chosen on val: batch size x learning rate (issue 10).

    python scripts/student_schedule_grid.py [--env ENV] [--batches 16 32 64] [--lrs 5e-4 1e-3 2e-3]
        [--seeds 2] [--variant main] [--workers 2] [--json out.json]

Trains the ``--variant`` student (default: the distilled main one) for every (batch size, learning
rate) pair and ``--seeds`` seeds (``distill.training.seed``, +1, ...), with the project's
``distill`` parameters otherwise (max_epochs, patience), on the catalog's ``samples_train``,
``samples_val`` and ``teacher_features_train`` (run ``kedro run --pipeline=features`` first). It
prints, per pair, the mean best-epoch val PRAUC over the seeds, the epochs run, the best epoch and
the CPU seconds per student. Test data is never read: the schedule is chosen on val.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from typing import Any

import numpy as np

_STATE: dict[str, Any] = {}


def _one(job: tuple[int, float, int, str]) -> dict[str, Any]:
    from leader_kedro.student.training import fit

    batch, lr, seed, variant = job
    cfg = _STATE["cfg"]
    tr = replace(cfg.training, batch_size=batch, lr=lr, seed=seed, progress=False)
    t0 = time.process_time()
    _, info = fit(replace(cfg, training=tr), _STATE["prepared"], variant)
    return {
        "batch_size": batch,
        "lr": lr,
        "seed": seed,
        "best_val_prauc": info["best_val_prauc"],
        "best_epoch": info["best_epoch"],
        "epochs_run": info["epochs_run"],
        "cpu_s": round(time.process_time() - t0, 1),
        "train_samples_per_second": info["train_samples_per_second"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variant", default="main")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from leader_kedro.student.benchmark import _load_inputs
    from leader_kedro.student.training import distill_config, prepare

    data = _load_inputs(args.env)
    if data["teacher_features"] is None:
        raise SystemExit("needs teacher_features_train: run `kedro run --pipeline=features` first")
    cfg = distill_config(data["params"])
    _STATE["cfg"] = cfg
    _STATE["prepared"] = prepare(
        cfg, data["samples_train"], data["samples_val"], data["vocab"], data["teacher_features"]
    )
    seeds = [cfg.training.seed + k for k in range(args.seeds)]
    jobs = [(b, lr, s, args.variant) for b in args.batches for lr in args.lrs for s in seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("fork")) as pool:
        rows = list(pool.map(_one, jobs))
    wall = time.perf_counter() - t0
    print(f"{len(jobs)} students in {wall:.0f} s wall ({args.workers} workers)")
    print(
        "| batch | lr | val PRAUC (mean over seeds) | epochs run | best epoch | CPU s / student |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for b in args.batches:
        for lr in args.lrs:
            group = [r for r in rows if r["batch_size"] == b and r["lr"] == lr]

            def mean(key: str, group: list = group) -> float:
                return float(np.mean([r[key] for r in group]))

            print(
                f"| {b} | {lr:g} | {mean('best_val_prauc'):.4f} | {mean('epochs_run'):.1f} | "
                f"{mean('best_epoch'):.1f} | {mean('cpu_s'):.1f} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"wall_s": round(wall, 1), "runs": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
