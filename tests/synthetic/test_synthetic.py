"""The synthetic MIMIC-III cohort: determinism, schema, formats, and clinical coherence."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leader_kedro.synthetic import generator as S
from leader_kedro.synthetic import knowledge as K

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
SURGICAL = {"3961", "3615", "3613", "3612", "3521", "3522", "8151", "8154", "8152", "7935",
            "4573", "4576", "4562", "0159", "3812", "3783", "3794", "5123", "4701"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# fixtures: one cohort in memory, a small one written to disk (twice for determinism)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort() -> dict[str, pd.DataFrame]:
    return S.generate_cohort(3000, seed=7)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for tag, seed in (("a", 11), ("b", 11), ("c", 12)):
        root = tmp_path_factory.mktemp(f"syn_{tag}")
        S.write_cohort(root / "raw", root / "raw" / "aux", 300, seed)
        out[tag] = root / "raw"
    return out


def _files(raw: Path) -> dict[str, str]:
    return {
        str(p.relative_to(raw)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(raw.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def visits(cohort) -> pd.DataFrame:
    return _visits(cohort)


@pytest.fixture(scope="module")
def dense_visits() -> pd.DataFrame:
    """The negative control: the first generator's mechanism, common codes only."""
    return _visits(S.generate_cohort(3000, seed=7, params={"mechanism": "dense"}))


def _visits(cohort) -> pd.DataFrame:
    """One row per admission with its ATC3 set (mapped like the GAMENet/SafeDrug route)."""
    adm = cohort["ADMISSIONS"].copy()
    pat = cohort["PATIENTS"]
    rx = cohort["PRESCRIPTIONS"]
    ndc = dict(zip(cohort["NDC2RXNORM"]["NDC"], cohort["NDC2RXNORM"]["RXCUI"], strict=True))
    r2a = cohort["RXCUI2ATC4"].drop_duplicates("RXCUI").set_index("RXCUI")["ATC4"]
    rx = rx[rx["NDC"].notna() & (rx["NDC"] != "0")]
    atc = rx["NDC"].map(ndc).map(r2a).str[:4]
    meds = atc.groupby(rx["HADM_ID"]).agg(lambda s: set(s.dropna()))
    adm["meds"] = adm["HADM_ID"].map(meds).apply(lambda s: s if isinstance(s, set) else set())
    dx = cohort["DIAGNOSES_ICD"].groupby("HADM_ID")["ICD9_CODE"].agg(set)
    adm["dx"] = adm["HADM_ID"].map(dx)
    px = cohort["PROCEDURES_ICD"].groupby("HADM_ID")["ICD9_CODE"].agg(set)
    adm["px"] = adm["HADM_ID"].map(px).apply(lambda s: s if isinstance(s, set) else set())
    adm = adm.merge(pat[["SUBJECT_ID", "GENDER", "DOB"]], on="SUBJECT_ID")
    admit = pd.to_datetime(adm["ADMITTIME"])
    adm["age"] = (admit - pd.to_datetime(adm["DOB"])).dt.days / 365.25
    adm["admit"] = admit
    adm = adm.sort_values(["SUBJECT_ID", "admit"]).reset_index(drop=True)
    adm["visit_index"] = adm.groupby("SUBJECT_ID").cumcount()
    return adm


# ---------------------------------------------------------------------------------------------
# determinism and files
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_files_different_seed_different(written):
    a, b, c = _files(written["a"]), _files(written["b"]), _files(written["c"])
    manifest = S.MANIFEST_NAME
    assert {k: v for k, v in a.items() if k != manifest} == {
        k: v for k, v in b.items() if k != manifest
    }
    m_a, m_b = (json.loads((written[t] / manifest).read_text()) for t in ("a", "b"))
    assert m_a["row_counts"] == m_b["row_counts"] and m_a["seed"] == 11
    expected = {f"{t}.csv" for t in S.RAW_TABLES} | {f"aux/{f}" for f in S.AUX_FILES.values()}
    assert expected <= set(a)
    for table in ("PATIENTS.csv", "ADMISSIONS.csv", "DIAGNOSES_ICD.csv", "PRESCRIPTIONS.csv"):
        assert a[table] != c[table]


def test_manifest_counts_rows(written, tmp_path):
    m = S.write_cohort(tmp_path / "raw", tmp_path / "aux", 50, 3)
    assert m["n_patients"] == 50 and m["seed"] == 3
    patients = pd.read_csv(m["paths"]["PATIENTS"], dtype=str)
    presc = pd.read_csv(m["paths"]["PRESCRIPTIONS"], dtype=str)
    assert len(patients) == 50 == m["row_counts"]["PATIENTS"]
    assert len(presc) == m["row_counts"]["PRESCRIPTIONS"]
    assert (tmp_path / "raw" / S.MANIFEST_NAME).is_file()


def test_bad_parameters_and_real_data_guard(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        S.generate_cohort(0, 1)
    with pytest.raises(ValueError, match="seed"):
        S.generate_cohort(10, "x")
    real = tmp_path / "mimic"
    real.mkdir()
    (real / "PATIENTS.csv").write_text("ROW_ID,SUBJECT_ID\n")
    with pytest.raises(FileExistsError, match="real MIMIC"):
        S.write_cohort(real, real / "aux", 10, 1)


def test_raw_csv_schema_and_string_codes(written):
    raw = written["a"]
    for table in S.RAW_TABLES:
        header = pd.read_csv(raw / f"{table}.csv", nrows=0).columns.tolist()
        assert header == S.COLUMNS[table], table
    dx = pd.read_csv(raw / "D_ICD_DIAGNOSES.csv", dtype=str)
    assert "0389" in set(dx["ICD9_CODE"]) and "042" in set(dx["ICD9_CODE"])  # leading zeros kept
    presc = pd.read_csv(raw / "PRESCRIPTIONS.csv", dtype=str)
    ndc = presc["NDC"].dropna()
    assert ndc.str.fullmatch(r"\d{11}|0").all()
    assert presc["NDC"].isna().any() and (ndc == "0").any()  # missing and "0" NDCs as in MIMIC
    assert presc["GSN"].dropna().str.fullmatch(r"\d{6}").all()
    adm = pd.read_csv(raw / "ADMISSIONS.csv", dtype=str)
    for col in ("ADMITTIME", "DISCHTIME"):
        assert adm[col].str.match(DATE_RE).all()
    assert adm["DEATHTIME"].dropna().str.match(DATE_RE).all()
    assert presc["STARTDATE"].str.endswith(" 00:00:00").all()
    years = pd.to_datetime(adm["ADMITTIME"]).dt.year
    assert years.between(2100, 2215).all()  # shifted into the future like MIMIC


def test_dataframe_dtypes(cohort):
    for table, cols in (
        ("DIAGNOSES_ICD", ["ICD9_CODE"]),
        ("PRESCRIPTIONS", ["NDC", "GSN", "DRUG"]),
    ):
        for col in cols:
            assert pd.api.types.is_string_dtype(cohort[table][col]), (table, col)
    assert pd.api.types.is_integer_dtype(cohort["ADMISSIONS"]["HADM_ID"])
    assert cohort["PRESCRIPTIONS"]["ICUSTAY_ID"].isna().any()


def test_aux_formats(written):
    aux = written["a"] / "aux"
    text = (aux / "ndc2rxnorm_mapping.txt").read_text()
    mapping = ast.literal_eval(text)
    assert isinstance(mapping, dict) and len(mapping) > 100
    assert all(re.fullmatch(r"\d{11}", k) and v.isdigit() for k, v in mapping.items())
    r2a = pd.read_csv(aux / "RXCUI2atc4.csv", dtype=str)
    assert r2a.columns.tolist() == ["YEAR", "MONTH", "NDC", "RXCUI", "ATC4"]
    assert r2a["ATC4"].str.fullmatch(r"[A-Z]\d{2}[A-Z]{2}").all()
    who = pd.read_csv(aux / "WHO ATC-DDD 2021-12-03.csv", dtype=str, keep_default_na=False)
    assert who.columns.tolist() == ["atc_code", "atc_name", "ddd", "uom", "adm_r", "note"]
    names = dict(zip(who["atc_code"], who["atc_name"], strict=True))
    assert names["N02B"] == "OTHER ANALGESICS AND ANTIPYRETICS"
    assert set(r2a["ATC4"].str[:4]) <= set(names)  # every ATC3 used has a name row
    ddi = pd.read_csv(aux / "ddi_pairs_atc3.csv", dtype=str)
    assert ddi.columns.tolist() == ["atc3_a", "atc3_b"]
    assert set(ddi["atc3_a"]) | set(ddi["atc3_b"]) <= set(names)


# ---------------------------------------------------------------------------------------------
# referential integrity
# ---------------------------------------------------------------------------------------------
def test_referential_integrity(cohort):
    adm, pat = cohort["ADMISSIONS"], cohort["PATIENTS"]
    assert adm["HADM_ID"].is_unique and pat["SUBJECT_ID"].is_unique
    assert set(adm["SUBJECT_ID"]) == set(pat["SUBJECT_ID"])
    for table, dictionary in (
        ("DIAGNOSES_ICD", "D_ICD_DIAGNOSES"),
        ("PROCEDURES_ICD", "D_ICD_PROCEDURES"),
    ):
        codes = cohort[table]
        assert set(codes["HADM_ID"]) <= set(adm["HADM_ID"])
        assert set(codes["ICD9_CODE"]) <= set(
            cohort[dictionary]["ICD9_CODE"]
        )  # every code has a title
        seq = codes.groupby("HADM_ID")["SEQ_NUM"].agg(["min", "max", "size"])
        assert (seq["min"] == 1).all() and (seq["max"] == seq["size"]).all()
        assert not codes.duplicated(["HADM_ID", "ICD9_CODE"]).any()
    assert set(cohort["PRESCRIPTIONS"]["HADM_ID"]) <= set(adm["HADM_ID"])
    assert cohort["D_ICD_DIAGNOSES"]["SHORT_TITLE"].str.len().max() <= 24


def test_admission_times_increase_but_hadm_ids_are_random(visits):
    admit = visits["admit"]
    disch = pd.to_datetime(visits["DISCHTIME"])
    assert (disch > admit).all()
    same = visits["SUBJECT_ID"].eq(visits["SUBJECT_ID"].shift(-1))
    assert (admit.shift(-1)[same] > disch[same]).all()  # no overlapping stays
    hadm_increasing = visits["HADM_ID"].shift(-1)[same] > visits["HADM_ID"][same]
    assert 0.3 < hadm_increasing.mean() < 0.7  # HADM_ID order is not admission order


def test_mimic_age_shift_and_deaths(visits, cohort):
    first = visits[visits["visit_index"] == 0]
    assert first["age"].between(17.9, 96).mean() > 0.9
    assert 0.005 < (first["age"] > 250).mean() < 0.1  # >89 shifted to ~300 years, as MIMIC does
    died = visits["HOSPITAL_EXPIRE_FLAG"] == 1
    assert (visits.loc[died, "DISCHARGE_LOCATION"] == "DEAD/EXPIRED").all()
    assert (
        visits.loc[died, "DEATHTIME"].notna().all() and visits.loc[~died, "DEATHTIME"].isna().all()
    )
    pat = cohort["PATIENTS"]
    assert ((pat["EXPIRE_FLAG"] == 1) == pat["DOD"].notna()).all()


# ---------------------------------------------------------------------------------------------
# clinical coherence (each of these fails on random noise)
# ---------------------------------------------------------------------------------------------
def test_single_visit_share_and_long_tail(visits):
    n_vis = visits.groupby("SUBJECT_ID").size()
    assert 0.65 <= (n_vis == 1).mean() <= 0.78
    assert n_vis.max() >= 6


def test_codes_per_visit(visits):
    assert 7 <= visits["dx"].apply(len).mean() <= 15
    n_px = visits["px"].apply(len)
    assert 1.5 <= n_px.mean() <= 5 and 0.03 < (n_px == 0).mean() < 0.3
    n_med = visits["meds"].apply(len)
    assert 8 <= n_med[n_med > 0].mean() <= 22


def test_prescriptions_repeat_rows_per_drug(cohort):
    rx = cohort["PRESCRIPTIONS"]
    per_drug = rx.groupby(["HADM_ID", "DRUG"]).size()
    assert (per_drug > 1).mean() > 0.3  # duplicate rows per drug, as in MIMIC


def test_mapping_coverage_below_full(cohort):
    rx = cohort["PRESCRIPTIONS"]
    valid = rx[rx["NDC"].notna() & (rx["NDC"] != "0")]
    ndc = set(cohort["NDC2RXNORM"]["NDC"])
    rx2 = dict(zip(cohort["NDC2RXNORM"]["NDC"], cohort["NDC2RXNORM"]["RXCUI"], strict=True))
    with_atc = set(cohort["RXCUI2ATC4"]["RXCUI"])
    mapped = valid["NDC"].isin(ndc) & valid["NDC"].map(rx2).isin(with_atc)
    assert 0.85 < mapped.mean() < 0.995
    assert 0.02 < 1 - len(valid) / len(rx) < 0.2


def _persistence(visits: pd.DataFrame, cls: str) -> tuple[float, float]:
    has = np.array([cls in s for s in visits["meds"]], dtype=bool)
    same = (
        visits["SUBJECT_ID"].eq(visits["SUBJECT_ID"].shift(-1)).to_numpy(dtype=bool, na_value=False)
    )
    cur, nxt = has[:-1][same[:-1]], has[1:][same[:-1]]
    return nxt[cur].mean(), nxt[~cur].mean()


@pytest.mark.parametrize("cls", ["H03A", "N06A", "C10A", "A10A"])
def test_chronic_medication_persists(visits, cls):
    p_given, p_not = _persistence(visits, cls)
    assert p_given > 0.6 and p_given - p_not > 0.35, (p_given, p_not)


@pytest.mark.parametrize("cls", ["J01X", "J01D"])
def test_acute_medication_resolves(visits, cls):
    p_given, p_not = _persistence(visits, cls)
    assert p_given - p_not < 0.2, (p_given, p_not)


def test_insurance_follows_age(visits):
    live = visits["age"] < 200
    old = visits["age"] >= 65
    medicare = visits["INSURANCE"] == "Medicare"
    assert medicare[old & live].mean() > 0.8
    assert medicare[~old].mean() < 0.35
    assert (visits.loc[~old, "INSURANCE"] == "Private").mean() > 0.35


def test_elective_admissions_carry_surgery(visits):
    surgical = visits["px"].apply(lambda s: bool(s & SURGICAL))
    elective = visits["ADMISSION_TYPE"] == "ELECTIVE"
    assert 0.04 < elective.mean() < 0.25
    assert surgical[elective].mean() > 0.7
    assert surgical[elective].mean() > 3 * surgical[~elective].mean()


def test_age_and_sex_prevalence(visits):
    first = visits[visits["visit_index"] == 0]
    has = lambda codes: first["dx"].apply(lambda s: bool(s & codes))  # noqa: E731
    bph, hypothyroid, afib = has({"60000", "60001"}), has({"2449"}), has({"42731", "42732"})
    female = first["GENDER"] == "F"
    assert bph[female].sum() == 0 and bph[~female].mean() > 0.03
    assert hypothyroid[female].mean() > 2 * hypothyroid[~female].mean()
    age = first["age"].where(first["age"] < 200, 91)
    assert afib[age >= 75].mean() > 2.5 * afib[age < 55].mean()


def test_ethnicity_signal(visits):
    first = visits[visits["visit_index"] == 0]
    diabetes = first["dx"].apply(lambda s: any(c.startswith("250") for c in s))
    hisp = first["ETHNICITY"].str.startswith("HISPANIC")
    white = first["ETHNICITY"] == "WHITE"
    higher_risk = hisp | first["ETHNICITY"].str.startswith(("BLACK", "ASIAN"))
    assert diabetes[higher_risk].mean() > 1.1 * diabetes[white].mean()
    spanish = first["LANGUAGE"] == "SPAN"
    assert spanish[hisp].mean() > 0.3 and spanish[white].mean() == 0


def test_profile_predicts_first_visit_meds_but_not_trivially(visits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    first = visits[visits["visit_index"] == 0].reset_index(drop=True)
    age = first["age"].where(first["age"] < 200, 91.0)
    X = pd.get_dummies(
        first[
            ["GENDER", "INSURANCE", "ETHNICITY", "MARITAL_STATUS", "ADMISSION_TYPE", "LANGUAGE"]
        ].fillna("na")
    ).astype(float)
    X["age"] = (age - 65) / 15
    X["age2"] = X["age"] ** 2
    half = len(first) // 2
    aucs = {}
    for cls in ("C10A", "H03A", "A10A", "G04C", "J01D"):
        y = np.array([cls in s for s in first["meds"]], dtype=int)
        clf = LogisticRegression(max_iter=500).fit(X[:half], y[:half])
        aucs[cls] = roc_auc_score(y[half:], clf.predict_proba(X[half:])[:, 1])
    assert np.mean(list(aucs.values())) > 0.65, aucs  # learnable from the profile ...
    assert max(aucs.values()) < 0.97, aucs  # ... but not trivial


def test_known_interactions_occur(visits):
    pairs = {tuple(sorted(p)) for p in K.DDI_PAIRS}
    hits = visits["meds"].apply(
        lambda s: any(tuple(sorted((a, b))) in pairs for a in s for b in s if a < b)
    )
    assert 0.2 < hits.mean() < 0.99


# ---------------------------------------------------------------------------------------------
# the knowledge table against the public references (read in place from ../shared/data)
# ---------------------------------------------------------------------------------------------
def test_knowledge_codes_are_real(shared_data):
    demo = shared_data / "mimic3_demo"
    dx = pd.read_csv(demo / "D_ICD_DIAGNOSES.csv", dtype=str).set_index("icd9_code")
    px = pd.read_csv(demo / "D_ICD_PROCEDURES.csv", dtype=str).set_index("icd9_code")
    for mine, real in ((K.DIAGNOSES, dx), (K.PROCEDURES, px)):
        missing = sorted(set(mine) - set(real.index))
        assert not missing, missing
        wrong = [
            c
            for c, (short, long) in mine.items()
            if long.lower() != real.loc[c, "long_title"].lower()
        ]
        assert not wrong, wrong
        wrong = [c for c, (short, long) in mine.items() if short != real.loc[c, "short_title"]]
        assert not wrong, wrong  # MIMIC's own short titles (the ICD-9-CM abbreviated titles)
    who = pd.read_csv(shared_data / "aux" / "fabkury_atcd" / "WHO ATC-DDD 2021-12-03.csv",
                      dtype=str, keep_default_na=False).drop_duplicates("atc_code")  # fmt: skip
    names = dict(zip(who["atc_code"], who["atc_name"], strict=True))
    assert {c: n for c, n in K.ATC3.items() if names.get(c, "").lower() != n.lower()} == {}
    assert sorted({d[0] for d in K.DRUGS} - set(names)) == []


def test_knowledge_table_size_and_consistency():
    assert 40 <= len(K.CONDITIONS) and len(K.DIAGNOSES) >= 150 and len(K.PROCEDURES) >= 50
    assert 60 <= len(K.ATC3) <= 90
    kinds = {c["kind"] for c in K.CONDITIONS}
    assert kinds == {"chronic", "acute"}
    names = {c["name"] for c in K.CONDITIONS}
    for c in K.CONDITIONS:
        assert {code for code, _ in c["dx"] + c["dx_extra"]} <= set(K.DIAGNOSES), c["name"]
        assert set(c.get("px", {})) <= set(K.PROCEDURES), c["name"]
        assert set(c["meds"]) <= set(K.ATC3), c["name"]
        assert set(c.get("link", {})) | ({c["requires"]} if "requires" in c else set()) <= names
    assert {d[0][:4] for d in K.DRUGS} == set(K.ATC3)  # every class has a drug and vice versa
    assert set(K.RARE_DIAGNOSES) <= set(K.DIAGNOSES) and set(K.RARE_PROCEDURES) <= set(K.PROCEDURES)
    tails = [code for codes in K.DX_TAIL.values() for code in codes]
    assert set(K.DX_TAIL) <= names and set(tails) <= set(K.DIAGNOSES)
    assert len(tails) == len(set(tails)) >= 400  # one condition per tail code
    heads = {code for c in K.CONDITIONS for code, _ in c["dx"] + c["dx_extra"]}
    assert not set(tails) & (heads | set(K.RARE_DIAGNOSES))
    for rule in K.DRUG_RULES:
        assert set(rule["all_of"]) <= names and rule["atc"] in K.ATC3, rule
    assert set(K.CONDITION_CONTRAINDICATIONS) <= names
    targets = {t for t, _, _ in K.DRUG_WITHHOLDING}
    assert not targets & {d for _, d, _ in K.DRUG_WITHHOLDING}  # drivers are never withheld
    for c in K.CONDITIONS:
        assert c.get("starts", next(iter(names))) in names


def test_cli_prints_time_and_memory(tmp_path, capsys):
    assert S.main(["--patients", "40", "--seed", "1", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "generate + write CSVs" in out and "peak RSS" in out
    assert (tmp_path / "x" / "aux" / "RXCUI2atc4.csv").is_file()


# ---------------------------------------------------------------------------------------------
# names, the oracle and the mechanisms that make history, interactions and knowledge matter
# ---------------------------------------------------------------------------------------------
def test_titles_are_unique_mimic_style_short_titles(cohort):
    for table in (K.DIAGNOSES, K.PROCEDURES):
        shorts = [short for short, _ in table.values()]
        longs = [long for _, long in table.values()]
        assert len(set(shorts)) == len(shorts) and len(set(longs)) == len(longs)
        assert max(map(len, shorts)) <= 24
    d = cohort["D_ICD_DIAGNOSES"].set_index("ICD9_CODE")["SHORT_TITLE"]
    assert d.is_unique and cohort["D_ICD_PROCEDURES"]["SHORT_TITLE"].is_unique
    assert d["4019"] == "Hypertension NOS" and d["2724"] == "Hyperlipidemia NEC/NOS"
    assert d["2720"] == "Pure hypercholesterolem" and d["40391"] == "Hyp kid NOS w cr kid V"


def test_oracle_is_the_true_label_probability(cohort, visits):
    oracle = cohort["ORACLE"].set_index("HADM_ID").astype(float)
    v = visits[visits["meds"].apply(len) > 0]  # admissions without prescriptions are never samples
    prob = oracle.loc[v["HADM_ID"].astype("int64")].to_numpy()
    y = np.array([[atc in m for atc in oracle.columns] for m in v["meds"]], dtype=float)
    assert np.abs(prob.mean(0) - y.mean(0)).max() < 0.03  # every class, on average
    bins = np.digitize(prob.ravel(), np.linspace(0.1, 0.9, 9))
    for b in np.unique(bins):  # and reliable at every level of probability
        sel = bins == b
        if sel.sum() > 500:
            assert abs(y.ravel()[sel].mean() - prob.ravel()[sel].mean()) < 0.03, b


def test_rare_variants_call_for_their_category_drugs(visits):
    cond = next(c for c in K.CONDITIONS if c["name"] == "pneumonia")
    head = {code for code, _ in cond["dx"]}
    tail = set(K.DX_TAIL["pneumonia"])
    has_head = visits["dx"].apply(lambda s: bool(s & head))
    has_tail = visits["dx"].apply(lambda s: bool(s & tail)) & ~has_head
    neither = ~has_head & ~has_tail
    macrolide = visits["meds"].apply(lambda s: "J01F" in s)
    assert has_tail.sum() >= 20
    assert abs(macrolide[has_tail].mean() - macrolide[has_head].mean()) < 0.15
    assert macrolide[has_tail].mean() > macrolide[neither].mean() + 0.25


def test_dense_control_has_common_codes_only(dense_visits, visits):
    tails = {code for codes in K.DX_TAIL.values() for code in codes}
    assert not set().union(*dense_visits["dx"]) & tails
    assert len(set().union(*visits["dx"]) & tails) > 200


@pytest.mark.parametrize("cls", ["A04A", "A02B"])
def test_routine_persists_per_patient_but_not_in_the_dense_control(visits, dense_visits, cls):
    p_given, p_not = _persistence(visits, cls)
    assert p_given - p_not > 0.15, (p_given, p_not)
    p_given, p_not = _persistence(dense_visits, cls)
    assert abs(p_given - p_not) < 0.1, (p_given, p_not)


def test_acute_events_start_regimens():
    """After a seizure, a VTE or a stroke, the next admission gets that condition's regimen
    (antiepileptics, anticoagulants, statins), whatever its own codes say."""
    events = [("7803", "N03A"), (("4151", "4534"), "B01A"), (("433", "434"), "C10A")]

    def next_visit_share(params):
        v = _visits(S.generate_cohort(3000, seed=7, params=params))
        same = v["SUBJECT_ID"].eq(v["SUBJECT_ID"].shift(-1))
        hits = cases = 0
        for prefix, cls in events:
            event = v["dx"].apply(lambda s, p=prefix: any(c.startswith(p) for c in s)) & same
            nxt = v["meds"].shift(-1)[event]
            hits += sum(cls in m for m in nxt)
            cases += int(event.sum())
        return hits / cases

    assert next_visit_share({}) > next_visit_share({"event_regimens": False}) + 0.08


def test_two_conditions_together_call_for_a_drug(visits):
    af = visits["dx"].apply(lambda s: bool(s & {"42731", "42732"}))
    hf = visits["dx"].apply(lambda s: any(c.startswith("428") for c in s))
    digoxin = visits["meds"].apply(lambda s: "C01A" in s)
    assert digoxin[af & hf].mean() > digoxin[af & ~hf].mean() + 0.2


def test_interacting_drug_is_withheld(visits, dense_visits):
    def ratio(v):
        anticoag = v["meds"].apply(lambda s: "B01A" in s)
        nsaid = v["meds"].apply(lambda s: "M01A" in s)
        return nsaid[anticoag].mean() / nsaid[~anticoag].mean()

    assert ratio(visits) < 0.5 < ratio(dense_visits)


def test_bad_mechanism_parameters():
    with pytest.raises(ValueError, match="synthetic.mechanism"):
        S.SyntheticConfig(mechanism="other")
    with pytest.raises(ValueError, match="synthetic.tail_share"):
        S.SyntheticConfig(tail_share=1.5)
