"""A Kedro hook that times the catalog's saves and loads (the stages ``write`` and ``load``).

The ingest nodes log their own stages (generate, read, map, visits, vocab, split, samples,
oracle). What happens between the nodes, Kedro writing each output and reading the persisted
ones back for the next node, is only visible to a hook. ``python -m leader_kedro.bench ingest
--kedro`` registers this one on its session; a project can also list it in ``settings.HOOKS``.
"""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from leader_kedro.ingest.meter import StageMeter


class CatalogIOMeterHook:
    """Wall time and peak memory of every dataset save and load, as ``write:<name>`` and
    ``load:<name>`` rows of ``self.meter.stages`` (logged when ``log``)."""

    def __init__(self, log: bool = True) -> None:
        self.meter = StageMeter(log=log)
        self._running: dict[tuple[str, str], Any] = {}

    def _begin(self, kind: str, name: str) -> None:
        if not name.startswith("params:") and name != "parameters":
            self._running[(kind, name)] = self.meter.begin(f"{kind}:{name}")

    def _end(self, kind: str, name: str) -> None:
        running = self._running.pop((kind, name), None)
        if running is not None:
            self.meter.end(running, kind=kind, dataset=name)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._begin("write", dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._end("write", dataset_name)

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Any) -> None:
        self._begin("load", dataset_name)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        self._end("load", dataset_name)

    def totals(self) -> list[dict[str, Any]]:
        """One row per kind (write, load): summed wall and CPU time, largest peak."""
        out = []
        for kind in ("write", "load"):
            rows = [r for r in self.meter.stages if r.get("kind") == kind]
            if rows:
                out.append(
                    {
                        "stage": kind,
                        "wall_s": round(sum(r["wall_s"] for r in rows), 2),
                        "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in rows), 2),
                        "peak_gib": max(r["peak_gib"] for r in rows),
                    }
                )
        return out
