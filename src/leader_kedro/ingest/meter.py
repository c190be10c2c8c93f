"""Wall time and peak memory of each ingest stage (read, map, visits, vocab, split, samples, ...).

The peak of a stage is the largest resident set seen while it ran. A thread samples the
process's resident set every 10 ms during the stage (``/proc/self/statm``); when the stage raises
the process's high-water mark (``VmHWM``) the peak is that mark, exact. The process's own mark is
never reset, so ``/usr/bin/time`` or ``getrusage`` of a parent still see the true peak.
Without ``/proc`` (not Linux) only the wall time is measured and the peaks are 0.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
_KIB_PER_GIB = 1024**2


def _rss_kib() -> int:
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _hwm_kib() -> int:
    try:
        m = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def rss_gib() -> float:
    """The process's resident set now, in GiB."""
    return _rss_kib() / _KIB_PER_GIB


def process_peak_gib() -> float:
    """The process's resident-set high-water mark since it started, in GiB."""
    return _hwm_kib() / _KIB_PER_GIB


class _Sampler(threading.Thread):
    """Keeps the largest resident set seen, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True, name="ingest-meter")
        self.interval = interval
        self.max_kib = _rss_kib()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.max_kib = max(self.max_kib, _rss_kib())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.max_kib, _rss_kib())


class StageMeter:
    """Times stages and records their peak memory; ``log=True`` logs each stage as it ends.

    Each finished stage is a dict (``stage``, ``wall_s``, ``peak_gib``, ``rss_after_gib``) in
    ``stages``; a log record carries it as ``record.ingest_stage``, so a handler can collect the
    stages of a Kedro run (``python -m leader_kedro.bench ingest --kedro``).
    """

    def __init__(self, log: bool = True) -> None:
        self.stages: list[dict[str, Any]] = []
        self.log = log

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        running = self.begin(name)
        try:
            yield
        finally:
            self.end(running)

    def begin(self, name: str) -> tuple[str, int, _Sampler, float, float]:
        """Start measuring a stage (``stage`` is the context-manager form); ``end`` stops it."""
        sampler = _Sampler()
        sampler.start()
        return name, _hwm_kib(), sampler, time.perf_counter(), time.process_time()

    def end(self, running: tuple[str, int, _Sampler, float, float], **extra: Any) -> dict[str, Any]:
        name, hwm_before, sampler, t0, cpu0 = running
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        peak = sampler.stop()
        hwm_after = _hwm_kib()
        if hwm_after > hwm_before:  # a new process record: the mark is this stage's peak
            peak = max(peak, hwm_after)
        return self.record(name, wall, peak / _KIB_PER_GIB, cpu_s=round(cpu, 2), **extra)

    def record(self, name: str, wall_s: float, peak_gib: float, **extra: Any) -> dict[str, Any]:
        """One stage's row; ``cpu_s`` (the process's CPU time, all threads) when measured."""
        row = {
            "stage": name,
            "wall_s": round(wall_s, 2),
            "peak_gib": round(peak_gib, 2),
            "rss_after_gib": round(rss_gib(), 2),
            **extra,
        }
        self.stages.append(row)
        if self.log:
            logger.info(
                "ingest stage %s: %.1f s (CPU %.1f s), peak %.2f GiB",
                name,
                row["wall_s"],
                row.get("cpu_s", float("nan")),
                row["peak_gib"],
                extra={"ingest_stage": row},
            )
        return row

    def table(self) -> str:
        """The stages as a fixed-width text table (what the benchmark prints)."""
        return stage_table(self.stages)


def stage_table(stages: list[dict[str, Any]]) -> str:
    """Stage, wall seconds, CPU seconds (all threads; '-' when not measured), peak GiB."""
    lines = [f"{'stage':<10}{'wall s':>9}{'CPU s':>9}{'peak GiB':>10}"]
    for r in stages:
        cpu = f"{r['cpu_s']:>9.2f}" if "cpu_s" in r else f"{'-':>9}"
        lines.append(f"{r['stage']:<10}{r['wall_s']:>9.2f}{cpu}{r['peak_gib']:>10.2f}")
    return "\n".join(lines)
