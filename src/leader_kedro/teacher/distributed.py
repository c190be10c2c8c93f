"""The teacher across processes or GPUs: data-parallel fine-tuning (DDP) and feature extraction.

``teacher.distributed.processes`` / ``features.distributed.processes`` > 1 make the Kedro node
launch that many worker processes with ``torchrun`` (or ``accelerate launch``, which also takes an
FSDP or DeepSpeed config file for 7B-class backbones) and wait for them:

- ``train``: every worker runs :func:`leader_kedro.teacher.training.train_teacher`; the HF
  ``Trainer`` sees the launcher's environment and wraps the model in DDP (``gloo`` on CPU,
  ``nccl`` on GPUs). Rank 0 alone writes checkpoints and the trained adapter + head to a scratch
  folder, which the node loads back.
- ``encode``: the prompts are dealt out round-robin (``rank::world_size``, so each worker gets a
  similar length mix), every worker pools its share, ``gather_object`` brings all rows to rank 0,
  which puts them back in prompt order and writes one scratch file.

In both cases the Kedro process is the only one that writes catalog outputs. The workers are
plain ``python -m leader_kedro.teacher.distributed <task> <folder>`` processes, so the same code
runs under any launcher.

Importable without torch; torch is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leader_kedro.contracts import ParameterError

logger = logging.getLogger(__name__)

#: set in the workers' environment: they never launch workers of their own
WORKER_ENV = "LEADER_DISTRIBUTED_WORKER"
BACKEND_ENV = "LEADER_DISTRIBUTED_BACKEND"
LAUNCHERS = ("torchrun", "accelerate")


@dataclass(frozen=True)
class DistributedConfig:
    """``teacher.distributed`` and ``features.distributed`` (conf/base/parameters_*.yml)."""

    processes: int = 1  # 1: in the Kedro process; > 1: that many data-parallel workers
    backend: str = "auto"  # auto: nccl with CUDA, else gloo | gloo | nccl
    launcher: str = "torchrun"  # torchrun | accelerate
    accelerate_config: str | None = None  # `accelerate launch --config_file` (FSDP, DeepSpeed)

    def __post_init__(self) -> None:
        if int(self.processes) < 1:
            raise ParameterError(f"distributed.processes must be >= 1, got {self.processes}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ParameterError(
                f"distributed.backend must be auto, gloo or nccl, got {self.backend!r}"
            )
        if self.launcher not in LAUNCHERS:
            raise ParameterError(
                f"distributed.launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}"
            )
        if self.accelerate_config and self.launcher != "accelerate":
            raise ParameterError("distributed.accelerate_config needs launcher: accelerate")

    @property
    def enabled(self) -> bool:
        """True when this process should launch workers (never inside a worker)."""
        return int(self.processes) > 1 and not in_worker()


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the launcher's environment; (0, 0, 1) outside one."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


# --------------------------------------------------------------------------- launching
def launch(task: str, folder: Path, cfg: DistributedConfig) -> None:
    """Run ``task`` in ``cfg.processes`` worker processes and wait; raise when one fails."""
    n = int(cfg.processes)
    worker = ["-m", "leader_kedro.teacher.distributed", task, str(folder)]
    if cfg.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={n}", *worker]
    else:
        import torch

        if not torch.cuda.is_available():
            # `accelerate launch --cpu` starts ONE process (several only through MPI)
            raise ParameterError(
                f"{task_parameter(task)}.launcher: accelerate needs GPUs (on CPU it would run a "
                "single process); use launcher: torchrun with backend: gloo on CPU"
            )
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n)]
        if cfg.accelerate_config:
            cmd += ["--config_file", str(cfg.accelerate_config)]
        else:
            cmd += ["--multi_gpu"]
        cmd += worker
    env = {**os.environ, WORKER_ENV: "1", BACKEND_ENV: resolve_backend(cfg.backend)}
    logger.info("teacher %s on %d processes: %s", task, n, " ".join(cmd))
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the distributed teacher {task} failed in its worker processes (exit code "
            f"{done.returncode}; their output is above). Set {task_parameter(task)}.processes: 1 "
            "to run it in the Kedro process."
        )


def task_parameter(task: str) -> str:
    return "teacher.distributed" if task == "train" else "features.distributed"


class _Scratch:
    """A temporary folder for one distributed task, removed afterwards."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="leader-teacher-ddp-"))
        return self.path

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------- train
def train(
    prompts_train,
    samples_train,
    prompts_val,
    samples_val,
    medications: list[str],
    params: dict,
    seed: int,
    cfg: DistributedConfig,
):
    """``train_teacher`` in ``cfg.processes`` DDP workers; returns the bundle and history of rank 0."""
    from leader_kedro.teacher.model import load_teacher

    with _Scratch() as folder:
        for name, frame in (
            ("prompts_train", prompts_train),
            ("samples_train", samples_train),
            ("prompts_val", prompts_val),
            ("samples_val", samples_val),
        ):
            frame.to_parquet(folder / f"{name}.parquet")
        spec = {"params": params, "seed": int(seed), "medications": list(medications)}
        (folder / "spec.json").write_text(json.dumps(spec, default=str))
        launch("train", folder, cfg)
        history = json.loads((folder / "result" / "history.json").read_text())
        bundle = load_teacher(folder / "result" / "teacher", verify=True)
    history["summary"]["distributed"] = {
        "processes": int(cfg.processes),
        "backend": resolve_backend(cfg.backend),
        "launcher": cfg.launcher,
    }
    return bundle, history


def _train_worker(folder: Path) -> None:
    import pandas as pd

    from leader_kedro.teacher import training
    from leader_kedro.teacher.model import save_teacher

    spec = json.loads((folder / "spec.json").read_text())
    frames = {
        name: pd.read_parquet(folder / f"{name}.parquet")
        for name in ("prompts_train", "samples_train", "prompts_val", "samples_val")
    }
    bundle, history = training.train_teacher(
        frames["prompts_train"],
        frames["samples_train"],
        frames["prompts_val"],
        frames["samples_val"],
        spec["medications"],
        spec["params"],
        seed=int(spec["seed"]),
    )
    rank, _, _ = world()
    if rank == 0:  # one writer
        # rebuilt from the best checkpoint (whole tensors): under FSDP/DeepSpeed this rank's model
        # is sharded; under DDP the two are the same weights
        bundle = training.bundle_from_checkpoint(
            spec["params"], spec["medications"], int(spec["seed"]), history
        )
        result = folder / "result"
        result.mkdir()
        save_teacher(bundle, result / "teacher")
        (result / "history.json").write_text(json.dumps(history, default=str))


# --------------------------------------------------------------------------- encode
def encode(
    bundle,
    texts: Sequence[str],
    batch_size: int,
    cfg: DistributedConfig,
    progress: bool = False,
) -> np.ndarray:
    """Pooled hidden states [N, H] of ``texts`` (in their order) from ``cfg.processes`` workers."""
    from leader_kedro.teacher.model import save_teacher

    with _Scratch() as folder:
        save_teacher(bundle, folder / "teacher")
        (folder / "texts.json").write_text(json.dumps(list(texts)))
        spec = {"batch_size": int(batch_size), "progress": bool(progress)}
        (folder / "spec.json").write_text(json.dumps(spec))
        launch("encode", folder, cfg)
        hidden = np.load(folder / "result" / "hidden.npy")
    if hidden.shape[0] != len(texts):
        raise RuntimeError(f"distributed encode returned {hidden.shape[0]} rows for {len(texts)}")
    return hidden


def _encode_worker(folder: Path) -> None:
    import torch
    import torch.distributed as dist

    from leader_kedro.teacher.model import load_teacher

    rank, local_rank, size = world()
    backend = os.environ.get(BACKEND_ENV) or resolve_backend("auto")
    dist.init_process_group(backend=backend)
    try:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        bundle = load_teacher(folder / "teacher", device=device, verify=True)
        texts = json.loads((folder / "texts.json").read_text())
        spec = json.loads((folder / "spec.json").read_text())
        mine = np.arange(rank, len(texts), size)
        hidden, _ = bundle.encode(
            [texts[i] for i in mine],
            batch_size=int(spec["batch_size"]),
            progress=bool(spec["progress"]) and rank == 0,  # one bar: rank 0's share
        )
        parts: list[Any] | None = [None] * size if rank == 0 else None
        dist.gather_object((mine, hidden), parts, dst=0)
        if rank == 0:
            assert parts is not None
            out = np.zeros((len(texts), bundle.config["hidden_size"]), dtype=np.float32)
            for index, rows in parts:
                out[index] = rows
            (folder / "result").mkdir()
            np.save(folder / "result" / "hidden.npy", out)
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry point: ``python -m leader_kedro.teacher.distributed train|encode <folder>``."""
    task, folder = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="[rank %(process)d] %(name)s: %(message)s")
    {"train": _train_worker, "encode": _encode_worker}[task](Path(folder))


if __name__ == "__main__":
    main()
