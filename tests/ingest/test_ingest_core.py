"""Ingest core on tiny hand-made tables: mapping, visits, vocab, DDI, samples, split, report."""

import copy

import numpy as np
import pandas as pd
import pytest
from raw_tables import INGEST, write_aux, write_raw  # noqa: E402

from leader_kedro.ingest.samples import make_samples, split_patients  # noqa: E402
from leader_kedro.ingest.stage import run_ingest  # noqa: E402


@pytest.fixture()
def dirs(tmp_path):
    return write_raw(tmp_path / "raw"), write_aux(tmp_path / "aux")


def run(dirs, source="mimic3", **overrides):
    ingest = copy.deepcopy(INGEST)
    for key, value in overrides.items():
        ingest[key] = value
    return run_ingest(source, dirs[0], dirs[1], ingest, seed=0)


def test_visits_follow_the_contract_and_drops_are_counted(dirs):
    out = run(dirs)
    v = out["visits"]
    assert list(v["hadm_id"]) == [12, 11, 21, 31]  # admittime order inside patient 1
    assert v["subject_id"].dtype == "int64" and v["hadm_id"].dtype == "int64"
    assert v["visit_index"].tolist() == [0, 1, 0, 0]
    assert pd.api.types.is_datetime64_any_dtype(v["admittime"])
    row = v.set_index("hadm_id").loc[11]
    assert row["diagnoses"] == ["4019", "3893"] and row["procedures"] == ["3893"]  # SEQ_NUM order
    assert row["medications"] == ["B01A", "N02B"]  # R2 has C10AA and B01AC: first sorted wins
    assert v.set_index("hadm_id").loc[12, "medications"] == [
        "C07A",
        "N02B",
    ]  # C07A via the direct table
    assert v.set_index("hadm_id").loc[21, "language"] == "unknown"
    r = out["report"]
    assert set(r) >= {
        "source",
        "rows_read",
        "mapping",
        "dropped",
        "cohort",
        "samples",
        "parameters",
    }
    assert r["rows_read"]["PRESCRIPTIONS"] == 10
    assert r["dropped"]["rows"]["PRESCRIPTIONS:ndc_missing_or_zero"] == 1
    assert r["dropped"]["rows"]["PRESCRIPTIONS:ndc_unmapped"] == 1
    assert r["dropped"]["visits"] == {
        "no_procedures_recorded": 1,
        "no_medications_recorded": 1,
        "no_medication_mapped_to_atc3": 1,
        "patient_below_min_visits": 0,
    }
    assert (
        r["mapping"]["by_route"]["rxnorm"]["ndc"] == 2
        and r["mapping"]["by_route"]["direct"]["ndc"] == 1
    )
    assert r["mapping"]["aux"]["rxcui_with_several_atc4"] == 1
    c = r["cohort"]
    assert (c["patients"], c["visits"], c["single_visit_patients"]) == (3, 4, 2)
    assert c["single_visit_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert c["n_medications"] == 3 and c["mean_medications_per_visit"] == pytest.approx(7 / 4)
    # visits with both N02B and B01A: 11 and 21 -> 2 interacting pairs out of 1+1+1+0 pairs
    assert c["ddi_rate_ground_truth"] == pytest.approx(2 / 3, abs=1e-4)


def test_age_from_dob_is_capped(dirs):
    out = run(dirs)
    v = out["visits"].set_index("hadm_id")
    assert v.loc[11, "age"] == pytest.approx(60.41, abs=0.01)
    assert v.loc[31, "age"] == 90.0  # DOB 300 years earlier: MIMIC's >89 shift
    assert out["report"]["cohort"]["age"]["n_capped"] == 1


def test_type_prefixed_tokens_do_not_collide(dirs):
    vocab = run(dirs)["vocab"]
    assert "D_3893" in vocab["tokens"] and "P_3893" in vocab["tokens"]
    assert len(vocab["tokens"]) == len(set(vocab["tokens"]))
    assert vocab["tokens"][:3] == ["[PAD]", "[CLS]", "[MASK]"]
    assert vocab["medication"] == ["B01A", "C07A", "N02B"]
    assert all(values[0] == "unknown" for values in vocab["profile"].values())
    assert vocab["age_bins"] == sorted(vocab["age_bins"])


def test_code_names_and_ddi_adjacency(dirs):
    out = run(dirs)
    names = out["code_names"]
    assert names["medication"]["N02B"] == "other analgesics and antipyretics"
    assert names["diagnosis"]["4019"] == "Unspecified essential hypertension"  # long by default
    assert names["procedure"]["3893"] == "Venous catheterization"
    short = run(dirs, icd_title="short")["code_names"]
    assert short["diagnosis"]["4019"] == "Hypertension NOS"  # LEADER's MIMIC-III setting
    assert short["procedure"]["3893"] == "Venous cath NEC"
    ddi = out["ddi_adjacency"]
    assert list(ddi.index) == list(ddi.columns) == out["vocab"]["medication"]
    a = ddi.to_numpy()
    assert (a == a.T).all() and np.diag(a).sum() == 0
    assert ddi.loc["N02B", "B01A"] == 1 and a.sum() == 2  # C07A-Z99Z is outside the vocab


def test_visit_order_hadm_id_replicates_published_pipelines(dirs):
    by_time = run(dirs, split={"ratios": [1, 0, 0]})
    by_id = run(dirs, visit_order="hadm_id", split={"ratios": [1, 0, 0]})
    assert by_id["visits"]["hadm_id"].tolist()[:2] == [11, 12]
    t_time = by_time["samples"]["train"].set_index("subject_id").loc[1]
    t_id = by_id["samples"]["train"].set_index("subject_id").loc[1]
    assert t_time["hadm_id"] == 11 and t_time["medications"] == [["C07A", "N02B"]]
    assert t_id["hadm_id"] == 12 and t_id["medications"] == [["B01A", "N02B"]]


def test_min_visits_drops_and_counts_single_visit_patients(dirs):
    out = run(dirs, min_visits=2)
    assert out["visits"]["subject_id"].unique().tolist() == [1]
    assert out["report"]["dropped"]["patients"]["below_min_visits"] == 2
    assert out["report"]["dropped"]["visits"]["patient_below_min_visits"] == 2


def test_join_policy_can_keep_visits_without_procedures(dirs):
    out = run(dirs, required_code_types=["diagnoses", "medications"])
    v = out["visits"].set_index("hadm_id")
    assert 32 in v.index and v.loc[32, "procedures"] == []


def test_top_k_limits_the_vocabularies(dirs):
    out = run(dirs, top_k_medications=1, top_k_diagnoses=1)
    assert out["vocab"]["medication"] == ["N02B"] and out["vocab"]["diagnosis"] == ["4019"]
    assert out["report"]["dropped"]["rows"]["medications:code_outside_top_k"] == 4
    # visits 31 and 32 hold only 42731; the first missing type (diagnoses) is the reason
    assert out["report"]["dropped"]["visits"]["no_diagnoses_in_top_k"] == 2


def test_last_visit_vs_every_visit_protocol(dirs):
    last = run(dirs, split={"ratios": [1, 0, 0]})["samples"]["train"]
    every = run(dirs, split={"ratios": [1, 0, 0]}, sample_protocol="every_visit")["samples"][
        "train"
    ]
    assert len(last) == 3 and last["subject_id"].is_unique
    assert len(every) == 4 and every["sample_id"].is_unique
    s = every.set_index("hadm_id")
    assert s.loc[12, "n_past"] == 0 and s.loc[11, "n_past"] == 1
    for _, row in every.iterrows():
        assert len(row["diagnoses"]) == len(row["procedures"]) == row["n_past"] + 1
        assert len(row["medications"]) == row["n_past"]
        assert row["sample_id"] == f"{row['subject_id']}_{row['hadm_id']}"
    assert s.loc[11, "diagnoses"] == [["4019"], ["4019", "3893"]]  # current visit last
    assert s.loc[11, "target"] == ["B01A", "N02B"]


def test_make_samples_accepts_visits_loaded_from_parquet(dirs, tmp_path):
    visits = run(dirs)["visits"]
    visits.to_parquet(tmp_path / "v.parquet")
    again = make_samples(pd.read_parquet(tmp_path / "v.parquet"), "last_visit")
    direct = make_samples(visits, "last_visit")
    assert again["target"].tolist() == direct["target"].tolist()
    assert again["diagnoses"].tolist() == direct["diagnoses"].tolist()


def test_seeded_split_by_patient():
    ids = np.arange(1000, 2000)
    a = split_patients(ids, "random", [0.8, 0.1, 0.1], seed=7)
    b = split_patients(ids[::-1], "random", [0.8, 0.1, 0.1], seed=7)
    c = split_patients(ids, "random", [0.8, 0.1, 0.1], seed=8)
    assert a.equals(b) and not a.equals(c)
    assert a["subject_id"].is_unique and a["split"].value_counts().to_dict() == {
        "train": 800,
        "val": 100,
        "test": 100,
    }
    seq = split_patients(ids, "sequential", [0.8, 0.1, 0.1])
    assert seq.loc[seq["split"] == "train", "subject_id"].tolist() == list(range(1000, 1800))
    assert seq.loc[seq["split"] == "test", "subject_id"].min() == 1900


def test_samples_disjoint_across_splits_and_match_split_ids(tmp_path):
    from leader_kedro.ingest.samples import build_samples

    rng = np.random.default_rng(0)
    rows = []
    for sid in range(1, 201):
        for k in range(int(rng.integers(1, 4))):
            rows.append(
                {
                    "subject_id": sid,
                    "hadm_id": sid * 10 + k,
                    "visit_index": k,
                    "diagnoses": ["1"],
                    "procedures": ["2"],
                    "medications": ["A01A"],
                    "age": 50.0,
                    **{
                        f: "unknown"
                        for f in (
                            "gender",
                            "insurance",
                            "language",
                            "marital_status",
                            "ethnicity",
                            "admission_type",
                        )
                    },
                }
            )
    visits = pd.DataFrame(rows)
    split_ids = split_patients(visits["subject_id"].unique(), "random", [0.8, 0.1, 0.1], seed=1)
    samples = build_samples(visits, split_ids, "every_visit", "last_visit")
    seen = [set(df["subject_id"]) for df in samples.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert (
        len(samples["train"])
        == visits["subject_id"].isin(split_ids.query("split == 'train'")["subject_id"]).sum()
    )
    assert len(samples["test"]) == (split_ids["split"] == "test").sum()


def test_lower_case_gzipped_tables_read_the_same(tmp_path, dirs):
    lower = write_raw(tmp_path / "lower", upper=False, gz=True)
    a, b = run(dirs), run((lower, dirs[1]))
    pd.testing.assert_frame_equal(a["visits"], b["visits"])


def test_twosides_ddi_keeps_least_frequent_side_effects(dirs):
    aux = dirs[1]
    pd.DataFrame(
        {
            "STITCH 1": ["CID1", "CID1", "CID2", "CID1"],
            "STITCH 2": ["CID2", "CID4", "CID4", "CID3"],
            "Polypharmacy Side Effect": ["C001", "C001", "C001", "C002"],
            "Side Effect Name": ["common", "common", "common", "rare"],
        }
    ).to_csv(aux / "drug-DDI.csv", index=False)
    (aux / "drug-atc.csv").write_text("CID1,N02BE01,N02BB02\nCID2,B01AC06\nCID3,C07AB02\n")
    out = run(dirs, ddi_source="twosides", ddi_twosides_topk=1)
    ddi = out["ddi_adjacency"]
    assert ddi.loc["N02B", "C07A"] == ddi.loc["C07A", "N02B"] == 1
    assert ddi.loc["N02B", "B01A"] == 0 and ddi.to_numpy().sum() == 2
    assert out["report"]["mapping"]["aux"]["ddi"]["side_effect_types_kept"] == 1
    both = run(dirs, ddi_source="twosides", ddi_twosides_topk=2)["ddi_adjacency"]
    assert both.loc["N02B", "B01A"] == 1


def test_same_seed_same_outputs(dirs):
    a, b = run(dirs), run(dirs)
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a["samples"][split], b["samples"][split])
    assert a["report"]["cohort"] == b["report"]["cohort"]


def test_direct_route_reads_fabkury_ndc11_atc4_tables(dirs):
    aux = dirs[1]
    pd.DataFrame(
        {"ndc11": ["00000000003", "00000000003"], "rxcui": ["9", "9"], "atc4": ["C07AB", "A01AB"]}
    ).to_csv(aux / "ndc2atc4.csv.gz", index=False)
    out = run(dirs, aux_files={"ndc2atc3": "ndc2atc4.csv.gz"})
    v = out["visits"].set_index("hadm_id")
    assert v.loc[12, "medications"] == ["A01A", "N02B"]  # several ATC4 for one NDC: first sorted
    assert out["report"]["mapping"]["aux"]["ndc_with_several_atc3"] == 1


def test_codes_keep_seq_num_order_and_duplicates_their_first_position(dirs):
    v = run(dirs)["visits"].set_index("hadm_id")
    assert v.loc[11, "diagnoses"] == ["4019", "3893"]  # SEQ_NUM 1 first, although listed second
    assert v.loc[21, "diagnoses"] == ["25000", "4019"]  # 4019 at SEQ_NUM 2 and 3: kept once, at 2
    assert v.loc[11, "medications"] == ["B01A", "N02B"]  # medications have no SEQ_NUM: sorted
