"""Wall time and peak memory of each ingest stage (read, map, visits, vocab, split, samples, write).

The peak of a stage is the process's resident-set high-water mark while the stage ran: on Linux
the mark is reset at the start of each stage (``/proc/self/clear_refs``, value 5) and read from
``VmHWM`` at its end. Where that is unavailable the mark cannot be reset, and the peak shown is
the process's peak so far (``ru_maxrss``), which the report says (``peak_kind``).
"""

from __future__ import annotations

import logging
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
GIB = 1024**3


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_gib() -> float:
    """The process's resident set now, in GiB (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib / 1024**2 if kib is not None else 0.0


def reset_peak() -> bool:
    """Reset the resident-set high-water mark; False where the system does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_gib() -> float:
    """The resident-set high-water mark (since the last reset), in GiB."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS; never reset
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024**2


class StageMeter:
    """Times stages and records their peak memory; ``log=True`` logs each stage as it ends."""

    def __init__(self, log: bool = True) -> None:
        self.stages: list[dict[str, Any]] = []
        self.log = log
        self.resettable = reset_peak()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        reset = reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            row = {
                "stage": name,
                "wall_s": round(time.perf_counter() - t0, 2),
                "peak_gib": round(peak_gib(), 2),
                "rss_after_gib": round(rss_gib(), 2),
                "peak_kind": "stage" if reset else "process",
            }
            self.stages.append(row)
            if self.log:
                logger.info(
                    "ingest stage %-8s %7.2f s   peak %5.2f GiB   (resident after %.2f GiB)",
                    name,
                    row["wall_s"],
                    row["peak_gib"],
                    row["rss_after_gib"],
                )

    def table(self) -> str:
        """The stages as a fixed-width text table (what the benchmark prints)."""
        lines = [f"{'stage':<10}{'wall s':>9}{'peak GiB':>10}"]
        lines += [f"{r['stage']:<10}{r['wall_s']:>9.2f}{r['peak_gib']:>10.2f}" for r in self.stages]
        return "\n".join(lines)
