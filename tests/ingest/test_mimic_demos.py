"""The ingest core on the real MIMIC-III and MIMIC-IV demos in ../shared/data (read in place)."""

import numpy as np
import pytest
from demo_helpers import env_ingest, principal_diagnoses  # noqa: E402

from leader_kedro.ingest.stage import run_ingest  # noqa: E402


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


def test_principal_diagnosis_comes_first_through_visits_and_samples(shared_data):
    """SEQ_NUM order: the principal diagnosis of every demo admission is the first diagnosis of
    its visit, and of the current visit (and each history visit) of the samples."""
    for env, folder, table, col, version in (
        ("mimic3", "mimic3_demo", "DIAGNOSES_ICD.csv", "icd9_code", False),
        ("mimic4", "mimic4_demo", "hosp/diagnoses_icd.csv.gz", "icd_code", True),
    ):
        if not (shared_data / folder / table).is_file():
            continue
        out = run_ingest(env, shared_data / folder, shared_data / "aux", env_ingest(env), seed=42)
        principal = principal_diagnoses(shared_data / folder / table, col, version)
        visits = out["visits"]
        first = visits["diagnoses"].map(lambda d: d[0])
        assert (first == visits["hadm_id"].map(principal)).all(), env
        hadm_of = visits.groupby("subject_id")["hadm_id"].apply(list)
        for df in out["samples"].values():
            for row in df.itertuples():
                assert row.diagnoses[-1][0] == principal[row.hadm_id]
                for hadm, dx in zip(hadm_of[row.subject_id], row.diagnoses, strict=False):
                    assert dx[0] == principal[hadm]
        # not alphabetical: the order carries information
        assert (visits["diagnoses"].map(lambda d: list(d) != sorted(d))).mean() > 0.5
