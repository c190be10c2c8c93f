"""Helpers (no tests) for the tests on the real MIMIC demos in ../shared/data, read in place."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def env_ingest(env: str) -> dict:
    """The `ingest` block of conf/<env>/parameters_ingest.yml (${seed} left to the seed argument)."""
    ingest = yaml.safe_load((ROOT / "conf" / env / "parameters_ingest.yml").read_text())["ingest"]
    ingest["split"] = {**ingest["split"], "seed": None}
    return ingest


def principal_diagnoses(path: Path, code_col: str, version: bool = False) -> dict:
    """hadm_id -> the code with SEQ_NUM 1 (the principal diagnosis), as the ingest writes codes."""
    d = pd.read_csv(path, dtype={code_col: str, "icd_version": str})
    d.columns = [c.lower() for c in d.columns]
    d = d[d["seq_num"] == 1]
    code = d[code_col].str.replace(".", "", regex=False)
    if version:
        code = d["icd_version"].astype(str) + "_" + code
    return dict(zip(d["hadm_id"], code, strict=True))
