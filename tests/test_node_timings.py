"""NodeTimingHook: every node's wall time lands in ``node_timings`` and the report renders it."""

from __future__ import annotations

import time

from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset

from leader_kedro.evaluation import report
from leader_kedro.hooks import NodeTimingHook


def _slow(x):
    time.sleep(0.05)
    return x + 1


def _report_of(timings):
    return report._section_node_timings(timings)


def _pipeline():
    return Pipeline(
        [
            Node(_slow, "a", "b", name="first"),
            Node(_slow, "b", "c", name="second"),
        ]
    )


def _run(hook, catalog, session):
    manager = _create_hook_manager()
    manager.register(hook)
    pipeline = _pipeline()
    params = {"session_id": session, "pipeline_name": "demo"}
    hook.before_pipeline_run(run_params=params, pipeline=pipeline, catalog=catalog)
    SequentialRunner().run(pipeline, catalog, hook_manager=manager)
    hook.after_pipeline_run(run_params=params, pipeline=pipeline, catalog=catalog)


def test_each_node_is_timed_into_the_dataset(tmp_path):
    from kedro.io import MemoryDataset

    path = tmp_path / "node_timings.json"
    catalog = DataCatalog({"a": MemoryDataset(1), "node_timings": JSONDataset(filepath=str(path))})
    hook = NodeTimingHook()
    _run(hook, catalog, "run-1")
    doc = catalog.load("node_timings")
    assert set(doc["nodes"]) == {"first", "second"}
    for entry in doc["nodes"].values():
        assert entry["wall_s"] >= 0.04 and entry["status"] == "ok" and entry["run"] == "run-1"
    assert doc["nodes"]["second"]["started_s"] >= doc["nodes"]["first"]["started_s"]
    assert doc["latest_run"] == "run-1" and doc["runs"]["run-1"]["wall_s"] >= 0.08
    assert doc["runs"]["run-1"]["nodes"] == 2 and doc["runs"]["run-1"]["pipeline"] == "demo"
    # a later run keeps the earlier entries of nodes it does not run, labelled with their run
    doc["nodes"]["older_stage_node"] = {"wall_s": 3.0, "run": "run-0", "finished_at": "x"}
    catalog.save("node_timings", doc)
    _run(hook, catalog, "run-2")
    doc = catalog.load("node_timings")
    assert doc["nodes"]["first"]["run"] == "run-2" and "older_stage_node" in doc["nodes"]
    text = "\n".join(_report_of(doc))
    assert "## Run time per node" in text and "| first |" in text
    assert text.index("| first |") < text.index("| second |") < text.index("older_stage_node")
    assert "earlier run" in text and "this run" in text


def test_catalog_without_the_dataset_is_left_alone(tmp_path):
    from kedro.io import MemoryDataset

    catalog = DataCatalog({"a": MemoryDataset(1)})
    _run(NodeTimingHook(), catalog, "r")  # no error, nothing saved
    assert "node_timings" not in catalog
    assert _report_of(None) == [] and _report_of({"nodes": {}}) == []


def test_an_unreadable_old_file_is_replaced(tmp_path):
    from kedro.io import MemoryDataset

    path = tmp_path / "node_timings.json"
    path.write_text("{not json")
    catalog = DataCatalog({"a": MemoryDataset(1), "node_timings": JSONDataset(filepath=str(path))})
    _run(NodeTimingHook(), catalog, "r")
    assert set(catalog.load("node_timings")["nodes"]) == {"first", "second"}
