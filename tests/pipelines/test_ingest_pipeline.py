"""The ingest Kedro pipeline: a slice on an in-memory catalog, and a full KedroSession run (env test)."""

import copy
import json

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from raw_tables import INGEST, write_aux, write_raw  # noqa: E402

from leader_kedro.pipelines.ingest import create_pipeline  # noqa: E402

OUTPUTS = {
    "raw_manifest",
    "visits",
    "vocab",
    "code_names",
    "ddi_adjacency",
    "samples_train",
    "samples_val",
    "samples_test",
    "split_ids",
    "ingest_report",
    "oracle_predictions_val",
    "oracle_predictions_test",
}


def test_pipeline_outputs_are_the_contract_names():
    pipe = create_pipeline()
    assert OUTPUTS <= pipe.all_outputs()
    assert {n.name for n in pipe.nodes} == {
        "prepare_raw",
        "build_cohort",
        "make_splits",
        "oracle_predictions",
        "write_ingest_report",
    }
    assert pipe.inputs() == {
        "params:source",
        "params:raw_dir",
        "params:aux_dir",
        "params:synthetic",
        "params:ingest",
        "params:seed",
    }


def test_pipeline_runs_on_an_in_memory_catalog(tmp_path):
    raw, aux = write_raw(tmp_path / "raw"), write_aux(tmp_path / "aux")
    params = {
        "source": "mimic3",
        "raw_dir": str(raw),
        "aux_dir": str(aux),
        "synthetic": {"n_patients": 1, "seed": 0},
        "ingest": copy.deepcopy(INGEST),
        "seed": 0,
    }
    catalog = DataCatalog({f"params:{k}": MemoryDataset(v) for k, v in params.items()})
    for name in OUTPUTS:
        catalog[name] = MemoryDataset()
    SequentialRunner().run(create_pipeline(), catalog)
    report = catalog.load("ingest_report")
    json.dumps(report)  # the report is plain JSON
    assert report["cohort"]["visits"] == 4 and report["samples"]["train"]["samples"] >= 1
    assert report["inputs"]["tables"]["prescriptions"].endswith("PRESCRIPTIONS.csv")
    assert report["parameters"]["ingest"]["top_k_medications"] == 300  # defaults filled in
    total = len(catalog.load("samples_train")) + sum(
        report["samples"][s]["samples"]
        for s in ("val", "test")  # val/test feed the oracle node
    )
    assert total == report["cohort"]["patients"]
    oracle = catalog.load("oracle_predictions_test")  # real MIMIC: no oracle, no rows
    assert oracle.empty and len(oracle.columns) == 1 + report["cohort"]["n_medications"]


def test_kedro_session_synthetic_env_test(isolated_project, tmp_path):
    """`kedro run --pipeline=ingest --env test` on the synthetic source, through KedroSession."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project_root = isolated_project
    bootstrap_project(project_root)
    raw = tmp_path / "synthetic"
    extra = {
        "raw_dir": str(raw),
        "aux_dir": str(raw / "aux"),
        "synthetic": {"n_patients": 120, "seed": 3},
    }
    with KedroSession.create(
        project_path=project_root, env="test", runtime_params=extra
    ) as session:
        session.run(pipeline_names=["ingest"])
    report = json.loads((project_root / "data" / "08_reporting" / "ingest_report.json").read_text())
    assert report["source"] == "synthetic" and report["rows_read"]["PATIENTS"] == 120
    assert report["cohort"]["patients"] > 0
    samples = pd.read_parquet(project_root / "data" / "05_model_input" / "samples_train.parquet")
    assert {"sample_id", "n_past", "diagnoses", "procedures", "medications", "target"} <= set(
        samples.columns
    )
    vocab = json.loads((project_root / "data" / "03_primary" / "vocab.json").read_text())
    assert all(set(t) <= set(vocab["medication"]) for t in samples["target"])
    ddi = pd.read_csv(project_root / "data" / "03_primary" / "ddi_adjacency.csv", index_col=0)
    assert list(ddi.index) == list(ddi.columns) == vocab["medication"]
    out = project_root / "data" / "07_model_output"
    test = pd.read_parquet(project_root / "data" / "05_model_input" / "samples_test.parquet")
    oracle = pd.read_parquet(out / "oracle_predictions_test.parquet")  # the synthetic ceiling
    assert oracle["sample_id"].tolist() == test["sample_id"].tolist()
    assert list(oracle.columns[1:]) == vocab["medication"]
    prob = oracle[vocab["medication"]].to_numpy()
    assert ((prob >= 0) & (prob <= 1)).all() and prob.sum(1).min() > 1
