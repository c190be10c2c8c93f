"""A run on the MIMIC-III demo logs nothing patient-level to MLflow (MIMIC's data use terms).

The whole flow runs on the demo (read in place from ../shared/data) with tracking on, in a
throw-away project copy, with the tiny random BERT of the reliability suite as teacher. Then
every artifact of the run and of the registered model, and every parameter and tag, is searched
for the demo's subject and admission ids, for any visit's code list, and for any prompt.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".csv", ""}


def _run_demo_flow(project: Path, params: dict) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    cwd = os.getcwd()
    os.chdir(project)
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env="test", runtime_params=params) as s:
            s.run()
    finally:
        os.chdir(cwd)


ID_KEYS = re.compile(r"subject|hadm|patient|admission|stay", re.IGNORECASE)


def _json_ids(value, ids: set[str], key: str = "") -> list[str]:
    """Ids in a JSON document: in any string or key, as a number under an id-like key, or as
    two or more numbers of one list. (A number alone is not searched: a tokenizer's vocabulary
    maps thousands of tokens to numbers that happen to look like subject ids.)"""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += [f"key {k!r}" for i in ids if re.search(rf"(?<![0-9.]){i}(?![0-9])", str(k))]
            found += _json_ids(v, ids, str(k))
    elif isinstance(value, list):
        numbers = [str(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
        if len(set(numbers) & ids) >= 2:
            found.append(f"a list of ids under {key!r}")
        for v in value:
            found += _json_ids(v, ids, key)
    elif isinstance(value, str):
        found += [f"{i} in a string" for i in ids if re.search(rf"(?<![0-9.]){i}(?![0-9])", value)]
    elif isinstance(value, int) and not isinstance(value, bool):
        if str(value) in ids and ID_KEYS.search(key):
            found.append(f"{key}={value}")
    return found


def _lists_of_strings(value):
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            yield tuple(value)
        for v in value:
            yield from _lists_of_strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _lists_of_strings(v)


@pytest.mark.slow
def test_a_mimic_demo_run_logs_no_patient_level_data(shared_data, tmp_path_factory, project_copy):
    from demo_helpers import env_ingest
    from tiny_cohort import save_tiny_bert

    root = tmp_path_factory.mktemp("mimic_privacy")
    project = project_copy(root, tracking=True)
    (project / "logs").mkdir(exist_ok=True)
    tiny_bert = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_privacy"))
    ingest = env_ingest("mimic3")
    ingest["split"]["seed"] = 42
    _run_demo_flow(
        project,
        {
            "source": "mimic3",
            "raw_dir": str(shared_data / "mimic3_demo"),
            "aux_dir": str(shared_data / "aux"),
            "ingest": ingest,
            "teacher": {"backbone": tiny_bert, "lora": {"layers_to_transform": [1]}},
            "evaluate": {"efficiency": {"enabled": False}},
        },
    )

    leaks = patient_data_in_mlflow(project, shared_data / "mimic3_demo")
    assert not leaks, "\n".join(leaks[:30])


def patient_data_in_mlflow(project: Path, demo: Path) -> list[str]:
    """Where the run's artifacts, parameters and tags hold a demo id, a code list or a prompt."""
    import mlflow

    admissions = pd.read_csv(demo / "ADMISSIONS.csv")
    admissions.columns = [c.lower() for c in admissions.columns]
    ids = {str(i) for i in admissions["subject_id"]} | {str(i) for i in admissions["hadm_id"]}
    visits = pd.read_parquet(project / "data/03_primary/visits.parquet")
    code_lists = {
        tuple(str(c) for c in codes)
        for column in ("diagnoses", "procedures", "medications")
        for codes in visits[column]
        if len(codes) >= 2
    }
    prompts = pd.concat(
        pd.read_parquet(project / f"data/05_model_input/prompts_{s}.parquet")
        for s in ("train", "val", "test")
    )
    prompt_heads = {p[:80] for p in prompts["prompt"] if len(p) >= 80}
    assert ids and code_lists and prompt_heads
    id_pattern = re.compile(
        rb"(?<![0-9.])(" + b"|".join(i.encode() for i in sorted(ids)) + rb")(?![0-9])"
    )
    sequences = [
        re.compile(r"(?<![\w.])" + r"""[\s,'"\[\]]+""".join(map(re.escape, codes)) + r"(?![\w.])")
        for codes in code_lists
        if len(codes) >= 3
    ]

    artifacts = [p for p in (project / "mlartifacts").rglob("*") if p.is_file()]
    artifacts = [p for p in artifacts if "/code/leader_kedro/" not in str(p)]  # our source code
    assert any(p.name == "MLmodel" for p in artifacts), "the student was registered"
    assert any(p.name == "ingest_report.json" for p in artifacts)
    leaks = []
    for path in artifacts:
        raw = path.read_bytes()
        if path.suffix == ".json":
            document = json.loads(raw)
            leaks += [f"{path}: {what}" for what in _json_ids(document, ids)]
            for found in _lists_of_strings(document):
                if found in code_lists:
                    leaks.append(f"{path}: a visit's code list {found}")
        elif id_pattern.search(raw):
            leaks.append(f"{path}: id {id_pattern.search(raw).group().decode()}")
        if path.suffix not in TEXT_SUFFIXES:
            continue
        text = raw.decode("utf-8", errors="replace")
        leaks += [f"{path}: a code list" for rx in sequences if rx.search(text)]
        leaks += [f"{path}: a prompt" for head in prompt_heads if head in text]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
            for key, value in values.items():
                if id_pattern.search(str(value).encode()):
                    leaks.append(f"run {kind} {key}={value[:80]}")
    return leaks
