"""The ingest core on the real MIMIC-III and MIMIC-IV demos in ../shared/data (read in place)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from leader_kedro.ingest.stage import run_ingest

ROOT = Path(__file__).resolve().parents[2]


def env_ingest(env: str) -> dict:
    """The `ingest` block of conf/<env>/parameters_ingest.yml (${seed} left to the seed argument)."""
    ingest = yaml.safe_load((ROOT / "conf" / env / "parameters_ingest.yml").read_text())["ingest"]
    ingest["split"] = {**ingest["split"], "seed": None}
    return ingest


def check_contract(out: dict) -> None:
    vocab, visits = out["vocab"], out["visits"]
    meds = set(vocab["medication"])
    assert all(len(m) == 4 for m in meds)
    assert len(vocab["tokens"]) == len(set(vocab["tokens"]))
    a = out["ddi_adjacency"].to_numpy()
    assert (a == a.T).all() and np.diag(a).sum() == 0 and a.sum() > 0
    assert (
        visits.groupby("subject_id")["visit_index"]
        .apply(lambda s: s.tolist() == list(range(len(s))))
        .all()
    )
    ids = []
    for df in out["samples"].values():
        ids += df["sample_id"].tolist()
        for row in df.itertuples():
            assert len(row.diagnoses) == row.n_past + 1 and len(row.medications) == row.n_past
            assert set(row.target) <= meds and row.target
    assert len(ids) == len(set(ids)) == out["report"]["cohort"]["patients"]
    split_of = out["split_ids"].set_index("subject_id")["split"]
    for split, df in out["samples"].items():
        assert (df["subject_id"].map(split_of) == split).all()


def test_mimic3_demo(shared_data):
    out = run_ingest(
        "mimic3", shared_data / "mimic3_demo", shared_data / "aux", env_ingest("mimic3"), seed=42
    )
    check_contract(out)
    r = out["report"]
    # SOURCES.md section 4: 107 admissions with dx+px+med, 82 patients, 11 with >= 2 visits, 110 ATC3
    c = r["cohort"]
    assert (c["visits"], c["patients"], c["n_medications"]) == (107, 82, 110)
    assert c["patients"] - c["single_visit_patients"] == 11
    assert (c["n_diagnoses"], c["n_procedures"]) == (523, 157)
    assert r["rows_read"]["PRESCRIPTIONS"] == 10398
    assert r["dropped"]["rows"]["PRESCRIPTIONS:ndc_missing_or_zero"] == 1478
    assert r["mapping"]["distinct_ndc"] == 995
    assert r["cohort"]["age"]["n_capped"] > 0 and out["visits"]["age"].max() == 90.0
    assert out["code_names"]["medication"]["N02B"] == "other analgesics and antipyretics"


def test_mimic4_demo(shared_data):
    if not (shared_data / "mimic4_demo" / "hosp").is_dir():
        pytest.skip("MIMIC-IV demo not found")
    out = run_ingest(
        "mimic4", shared_data / "mimic4_demo", shared_data / "aux", env_ingest("mimic4"), seed=42
    )
    check_contract(out)
    c = out["report"]["cohort"]
    # SOURCES.md section 4: 186 admissions with dx+px+med, 92 patients, 38 with >= 2 of them
    assert (c["visits"], c["patients"]) == (186, 92)
    assert c["patients"] - c["single_visit_patients"] == 38
    codes = set(out["vocab"]["diagnosis"]) | set(out["vocab"]["procedure"])
    assert all(code.startswith(("9_", "10_")) for code in codes)
    assert any(code.startswith("10_") for code in out["vocab"]["diagnosis"])
    assert out["report"]["mapping"]["codes_without_name"]["diagnosis"] == 0
    assert out["visits"]["ethnicity"].ne("unknown").all()  # `race` becomes the ethnicity field
