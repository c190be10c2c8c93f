"""Synthetic MIMIC-III cohort: the embedded default data source.

`generate_cohort` simulates patients from the curated knowledge table in `knowledge.py` and returns
the raw MIMIC-III v1.4 tables (UPPER-case columns, codes as strings, dates as
'YYYY-MM-DD HH:MM:SS' shifted into the 22nd century) plus the auxiliary mapping tables of the
GAMENet/SafeDrug lineage. `write_cohort` writes them where the ingest stage reads real data, so the
ingest code path is the same for synthetic and real MIMIC.

Everything is vectorised with numpy (loops run over conditions, classes and drugs, never over
patients) and deterministic from `numpy.random.default_rng(seed)`.

Command line benchmark: ``python -m leader_kedro.synthetic --patients 100000 --out /tmp/x``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from leader_kedro import knowledge as K

GENERATOR_VERSION = "1"
MANIFEST_NAME = "SYNTHETIC_MANIFEST.json"
RAW_TABLES = (
    "PATIENTS",
    "ADMISSIONS",
    "DIAGNOSES_ICD",
    "PROCEDURES_ICD",
    "PRESCRIPTIONS",
    "D_ICD_DIAGNOSES",
    "D_ICD_PROCEDURES",
)
AUX_FILES = {
    "NDC2RXNORM": "ndc2rxnorm_mapping.txt",
    "RXCUI2ATC4": "RXCUI2atc4.csv",
    "WHO_ATC": "WHO ATC-DDD 2021-12-03.csv",
    "DDI_PAIRS": "ddi_pairs_atc3.csv",
}
COLUMNS = {
    "PATIENTS": "ROW_ID,SUBJECT_ID,GENDER,DOB,DOD,DOD_HOSP,DOD_SSN,EXPIRE_FLAG",
    "ADMISSIONS": "ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,DEATHTIME,ADMISSION_TYPE,"
    "ADMISSION_LOCATION,DISCHARGE_LOCATION,INSURANCE,LANGUAGE,RELIGION,MARITAL_STATUS,ETHNICITY,"
    "EDREGTIME,EDOUTTIME,DIAGNOSIS,HOSPITAL_EXPIRE_FLAG,HAS_CHARTEVENTS_DATA",
    "DIAGNOSES_ICD": "ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE",
    "PROCEDURES_ICD": "ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE",
    "PRESCRIPTIONS": "ROW_ID,SUBJECT_ID,HADM_ID,ICUSTAY_ID,STARTDATE,ENDDATE,DRUG_TYPE,DRUG,"
    "DRUG_NAME_POE,DRUG_NAME_GENERIC,FORMULARY_DRUG_CD,GSN,NDC,PROD_STRENGTH,DOSE_VAL_RX,"
    "DOSE_UNIT_RX,FORM_VAL_DISP,FORM_UNIT_DISP,ROUTE",
    "D_ICD_DIAGNOSES": "ROW_ID,ICD9_CODE,SHORT_TITLE,LONG_TITLE",
    "D_ICD_PROCEDURES": "ROW_ID,ICD9_CODE,SHORT_TITLE,LONG_TITLE",
}
COLUMNS = {k: v.split(",") for k, v in COLUMNS.items()}

DAY = 86_400
YEAR = 365.25 * DAY
EPOCH_2100 = int(np.datetime64("2100-01-01T00:00:00", "s").astype(np.int64))
ETH_GROUPS = list(K.ETHNICITY_GROUP_SHARE)
CHRONIC_CONTINUE_P = 0.9  # a chronic regimen class is re-prescribed at each admission with this p
CHRONIC_CODED_P = 0.92  # a present chronic condition is coded in a given admission with this p
MULTI_VISIT_BASE_LOGIT = -1.45  # calibrated: ~70% single-visit patients


# --------------------------------------------------------------------------------------------
# small vectorised helpers
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _choice_rows(rng: np.random.Generator, probs: np.ndarray, u: np.ndarray | None = None):
    """One categorical draw per row of `probs` [n, k] (rows need not be normalised)."""
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    if u is None:
        u = rng.random(probs.shape[0])
    return np.minimum((u[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


def _choice(rng: np.random.Generator, weights, size: int) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return rng.choice(len(w), size=size, p=w / w.sum())


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0-based position of each element inside its run of equal values (input sorted by group)."""
    idx = np.arange(len(groups))
    change = np.ones(len(groups), dtype=bool)
    change[1:] = groups[1:] != groups[:-1]
    return idx - np.maximum.accumulate(np.where(change, idx, 0))


def _labels(values: list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _take(values: list[str] | pa.Array, idx: np.ndarray, mask: np.ndarray | None = None):
    arr = values if isinstance(values, pa.Array) else _labels(values)
    ind = pa.array(idx.astype(np.int64), mask=mask)
    return arr.take(ind)


def _dates(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """int seconds since 1970 -> 'YYYY-MM-DD HH:MM:SS' strings (null where mask)."""
    ts = pa.array(seconds.astype("datetime64[s]"), mask=mask)
    return ts.cast(pa.string())


def _short_title(title: str, width: int = 24) -> str:
    if len(title) <= width:
        return title
    out = ""
    for word in title.replace(",", "").split():
        cand = (out + " " + word).strip()
        if len(cand) > width:
            break
        out = cand
    return out or title[:width]


# --------------------------------------------------------------------------------------------
# fixed drug catalogue (independent of the cohort seed): NDCs, RXCUIs, mapping gaps
# --------------------------------------------------------------------------------------------
def drug_catalog() -> dict[str, Any]:
    """Items (one row per NDC) with their drug attributes, plus the aux mapping tables.

    Each drug gets 2-3 synthetic 11-digit NDCs and one synthetic RXCUI. A few secondary NDCs are
    left out of the NDC->RXCUI map, and a few map to an RXCUI missing from RXCUI->ATC4, so mapping
    coverage is below 100% as with real MIMIC. The first NDC of every drug always maps.
    """
    rng = np.random.default_rng(20240202)
    labelers = ["00338", "00409", "51079", "00904", "63323", "00121", "00781", "00074", "00006",
                "00054", "68084", "00185", "00093", "00172", "55390", "10019"]  # fmt: skip
    items: list[dict] = []
    seen: set[str] = set()
    rxcuis = rng.choice(np.arange(100_000, 2_000_000), size=2 * len(K.DRUGS), replace=False)
    for d, (atc4, name, strength, dose_unit, form_unit, route) in enumerate(K.DRUGS):
        n_ndc = 3 if rng.random() < 0.5 else 2
        gsn = f"{rng.integers(1, 80_000):06d}"
        num = "".join(ch for ch in strength.split()[0] if ch.isdigit() or ch == ".") or "1"
        abbrev = "".join(ch for ch in name.upper() if ch.isalpha())[:4] + num.replace(".", "")[:3]
        for j in range(n_ndc):
            while True:
                ndc = f"{labelers[rng.integers(len(labelers))]}{rng.integers(0, 10_000):04d}{rng.integers(0, 100):02d}"
                if ndc not in seen:
                    seen.add(ndc)
                    break
            gap = rng.random()
            items.append(
                dict(drug=d, atc4=atc4, atc3=atc4[:4], name=name, strength=strength,
                     dose_val=num, dose_unit=dose_unit, form_unit=form_unit, route=route,
                     gsn=gsn, formulary=abbrev, ndc=ndc, rxcui=str(rxcuis[d]),
                     in_ndc_map=not (j > 0 and gap < 0.12),
                     in_atc_map=not (j > 0 and 0.12 <= gap < 0.18),
                     weight=[0.6, 0.25, 0.15][j] if n_ndc == 3 else [0.7, 0.3][j])
            )  # fmt: skip
            if not items[-1]["in_atc_map"]:  # a distinct RXCUI that RXCUI2atc4 does not list
                items[-1]["rxcui"] = str(rxcuis[len(K.DRUGS) + d])
    return {"items": pd.DataFrame(items)}


# --------------------------------------------------------------------------------------------
# the simulation
# --------------------------------------------------------------------------------------------
def _simulate(n_patients: int, seed: int) -> dict[str, pa.Table]:
    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"synthetic.n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"synthetic.seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    n = int(n_patients)
    conds = K.CONDITIONS
    chronic = [i for i, c in enumerate(conds) if c["kind"] == "chronic"]
    acute = [i for i, c in enumerate(conds) if c["kind"] == "acute"]
    name_to_i = {c["name"]: i for i, c in enumerate(conds)}
    ch_pos = {ci: j for j, ci in enumerate(chronic)}
    dx_codes, px_codes, atc3s = list(K.DIAGNOSES), list(K.PROCEDURES), list(K.ATC3)
    dx_i = {c: i for i, c in enumerate(dx_codes)}
    px_i = {c: i for i, c in enumerate(px_codes)}
    atc_i = {c: i for i, c in enumerate(atc3s)}

    # ---- patients -------------------------------------------------------------------------
    female = rng.random(n) < 0.44
    eth = _choice(rng, list(K.ETHNICITY_GROUP_SHARE.values()), n)
    age0 = 18.0 + 77.0 * rng.beta(2.6, 1.6, n)
    frailty = rng.normal(0.0, 1.0, n)

    def profile_logit(c: dict, age: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        f = female if idx is None else female[idx]
        e = eth if idx is None else eth[idx]
        out = c["age"] * (age - 65.0) / 10.0
        fo = c["female"]
        out = out + np.where(f, math.log(fo) if fo > 0 else -np.inf, 0.0)
        eth_or = np.array([math.log(c.get("eth", {}).get(g, 1.0)) for g in ETH_GROUPS])
        return out + eth_or[e]

    # chronic conditions: present at first admission, or onset at a later admission
    onset = np.full((n, len(chronic)), 10_000, dtype=np.int32)
    present0 = np.zeros((n, len(chronic)), dtype=bool)
    order = []
    pending = list(chronic)
    while pending:  # links point to conditions computed earlier
        for ci in pending:
            if all(name_to_i[k] in order for k in conds[ci].get("link", {})):
                order.append(ci)
                pending.remove(ci)
                break
        else:
            raise ValueError("knowledge.CONDITIONS: circular chronic links")
    p_chronic = np.zeros((n, len(chronic)))
    for ci in order:
        c, j = conds[ci], ch_pos[ci]
        lg = _logit(c["prev"]) + profile_logit(c, age0) + 0.45 * frailty
        for other, orr in c.get("link", {}).items():
            lg = lg + math.log(orr) * present0[:, ch_pos[name_to_i[other]]]
        p = _sigmoid(lg)
        p_chronic[:, j] = p
        present0[:, j] = rng.random(n) < p
    later = rng.geometric(np.clip(0.12 * p_chronic, 1e-4, 1.0)).astype(np.int32)
    onset = np.where(present0, 0, later)

    # number of admissions: ~70% single; chronic burden and frailty raise readmission
    burden = present0.sum(axis=1)
    p_multi = _sigmoid(MULTI_VISIT_BASE_LOGIT + 0.2 * (burden - 3.0) + 0.35 * frailty)
    extra = np.where(rng.random(n) < p_multi, np.minimum(rng.geometric(0.5, n), 40), 0)
    n_visits = 1 + extra
    V = int(n_visits.sum())
    pat = np.repeat(np.arange(n), n_visits)
    vidx = _rank_within(pat)
    first_visit = vidx == 0

    # ---- visit times ----------------------------------------------------------------------
    t0 = EPOCH_2100 + rng.integers(0, int(100 * YEAR), n)
    t0 = t0 - t0 % 60
    gap = np.where(first_visit, 0.0, (rng.lognormal(math.log(180.0), 1.3, V) + 2.0) * DAY)
    # primary reason (needs age at the visit; approximate with the age at the first visit plus
    # the cumulative gap, LOS is added afterwards and is small by comparison)
    cum_gap = np.cumsum(gap)
    start_of = np.repeat(np.cumsum(n_visits) - n_visits, n_visits)
    cum_gap = cum_gap - cum_gap[start_of]
    age_v = age0[pat] + cum_gap / YEAR

    active = np.zeros((V, len(conds)), dtype=bool)
    for ci in chronic:
        active[:, ci] = onset[pat, ch_pos[ci]] <= vidx

    logits = np.empty((V, len(acute)))
    for a, ci in enumerate(acute):
        c = conds[ci]
        lg = math.log(c["prev"]) + profile_logit(c, age_v, pat)
        for other, orr in c.get("link", {}).items():
            lg = lg + math.log(orr) * active[:, name_to_i[other]]
        if "requires" in c:
            lg = np.where(active[:, name_to_i[c["requires"]]], lg, -np.inf)
        logits[:, a] = lg
    primary_a = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    primary = np.asarray(acute)[primary_a]
    severity_of = np.array([c.get("severity", 0) for c in conds])
    sev_mult = np.array([0.6, 1.0, 1.7, 2.6])[severity_of[primary]]
    for ci in acute:
        c = conds[ci]
        p_sec = c.get("secondary", 0.0) * sev_mult
        if "requires" in c:
            p_sec = p_sec * active[:, name_to_i[c["requires"]]]
        active[:, ci] = (primary == ci) | (rng.random(V) < p_sec)
    severity = np.max(np.where(active, severity_of[None, :], 0), axis=1)

    los = (rng.lognormal(math.log(3.5), 0.6, V) * (1.0 + 0.45 * severity) + 0.3) * DAY
    admit = t0[pat] + cum_gap.astype(np.int64)
    # add the previous stays' length so admissions never overlap
    cum_los = np.cumsum(los) - los
    cum_los = cum_los - cum_los[start_of]
    admit = admit + cum_los.astype(np.int64)
    admit = admit + rng.integers(0, 24 * 60, V) * 60
    admit = admit - admit % 60
    disch = admit + (los.astype(np.int64) // 60) * 60
    age_v = age0[pat] + (admit - t0[pat]) / YEAR

    # ---- admission profile ----------------------------------------------------------------
    elective_p = np.array([c.get("elective", 0.0) for c in conds])[primary]
    adm_u = rng.random(V)
    adm_type = np.where(adm_u < elective_p, 0, np.where(rng.random(V) < 0.12, 2, 1))
    adm_types = ["ELECTIVE", "EMERGENCY", "URGENT"]
    loc_labels = ["PHYS REFERRAL/NORMAL DELI", "CLINIC REFERRAL/PREMATURE",
                  "EMERGENCY ROOM ADMIT", "TRANSFER FROM HOSP/EXTRAM", "TRANSFER FROM SKILLED NUR"]  # fmt: skip
    loc_p = np.array([[0.88, 0.12, 0, 0, 0], [0, 0.12, 0.7, 0.15, 0.03], [0, 0.2, 0, 0.8, 0]])
    adm_loc = _choice_rows(rng, loc_p[adm_type])

    # insurance: Medicare from 65 (and for dialysis), Medicaid tied to social risk
    ins_labels = ["Medicare", "Private", "Medicaid", "Government", "Self Pay"]
    esrd = active[:, name_to_i["end stage renal disease"]]
    social = (
        active[:, name_to_i["alcohol dependence"]]
        | active[:, name_to_i["hiv"]]
        | active[:, name_to_i["hepatitis c"]]
    )
    old = age_v >= 65
    ins_p = np.where(
        old[:, None],
        np.array([0.9, 0.07, 0.02, 0.005, 0.005])[None, :],
        np.array([0.13, 0.56, 0.22, 0.05, 0.04])[None, :],
    ).copy()
    ins_p[~old & esrd, 0] += 0.9
    ins_p[~old & social, 2] += 0.35
    ins_p[~old & (eth[pat] == ETH_GROUPS.index("HISPANIC")), 2] += 0.15
    ins_u = rng.random(n)[pat]  # one latent per patient: insurance is stable unless age moves
    insurance = _choice_rows(rng, ins_p, ins_u)

    # marital status by age at first admission (stable per patient)
    mar_labels = ["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "SEPARATED", "LIFE PARTNER",
                  "UNKNOWN (DEFAULT)"]  # fmt: skip
    age_band = np.digitize(age0, [30, 65, 80])
    mar_p = np.array(
        [
            [0.15, 0.8, 0.0, 0.02, 0.01, 0.015, 0.005],
            [0.52, 0.28, 0.03, 0.12, 0.03, 0.01, 0.01],
            [0.55, 0.1, 0.2, 0.11, 0.02, 0.005, 0.015],
            [0.33, 0.08, 0.52, 0.05, 0.005, 0.0, 0.015],
        ]
    )[age_band].copy()
    alcohol0 = present0[:, ch_pos[name_to_i["alcohol dependence"]]]
    mar_p[alcohol0, 1] += 0.25
    mar_p[alcohol0, 3] += 0.15
    marital = _choice_rows(rng, mar_p)
    marital_missing = rng.random(n) < 0.05

    # ethnicity label, language (missing for ~25%), religion
    eth_labels, eth_choice = [], np.zeros(n, dtype=np.int64)
    lang_labels, lang_choice = [], np.zeros(n, dtype=np.int64)
    for g, group in enumerate(ETH_GROUPS):
        sel = np.flatnonzero(eth == g)
        opts = K.ETHNICITIES[group]
        eth_choice[sel] = len(eth_labels) + _choice(rng, [w for _, w in opts], len(sel))
        eth_labels += [lab for lab, _ in opts]
        lopts = K.LANGUAGES[group]
        lang_choice[sel] = len(lang_labels) + _choice(rng, [w for _, w in lopts], len(sel))
        lang_labels += [lab for lab, _ in lopts]
    lang_missing = rng.random(n) < 0.25
    religion = _choice(rng, [w for _, w in K.RELIGIONS], n)

    # ---- outcomes -------------------------------------------------------------------------
    last = np.r_[pat[1:] != pat[:-1], True]
    p_die = np.array([0.01, 0.03, 0.09, 0.22])[severity] * np.exp(0.25 * (age_v - 65) / 10)
    hosp_death = last & (rng.random(V) < p_die)
    died_later = rng.random(n) < _sigmoid(-1.6 + 0.5 * (age0 - 65) / 10 + 0.3 * burden)
    sev_discharge = np.where(age_v > 75, 1, 0) + (severity >= 2)
    dis_labels = ["HOME", "HOME HEALTH CARE", "SNF", "REHAB/DISTINCT PART HOSP",
                  "LONG TERM CARE HOSPITAL", "HOSPICE-HOME", "LEFT AGAINST MEDICAL ADVI", "DEAD/EXPIRED"]  # fmt: skip
    dis_p = np.array(
        [
            [0.55, 0.3, 0.07, 0.05, 0.01, 0.01, 0.01, 0],
            [0.3, 0.33, 0.2, 0.12, 0.02, 0.02, 0.01, 0],
            [0.15, 0.3, 0.3, 0.17, 0.05, 0.03, 0.0, 0],
        ]
    )[sev_discharge]
    discharge = np.where(hosp_death, 7, _choice_rows(rng, dis_p))

    # ---- diagnoses --------------------------------------------------------------------------
    d_visit, d_code, d_rank = [], [], []
    chronic_code = {}
    for ci in chronic:
        c = conds[ci]
        chronic_code[ci] = _choice(rng, [w for _, w in c["dx"]], n)
    for ci, c in enumerate(conds):
        is_chronic = c["kind"] == "chronic"
        mask = active[:, ci]
        if is_chronic:
            mask = mask & (rng.random(V) < CHRONIC_CODED_P)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        codes = np.array([dx_i[code] for code, _ in c["dx"]])
        pick = _choice(rng, [w for _, w in c["dx"]], rows.size)
        if is_chronic:
            keep = rng.random(rows.size) < 0.85
            pick = np.where(keep, chronic_code[ci][pat[rows]], pick)
            rank = np.full(rows.size, 3)
        else:
            rank = np.where(primary[rows] == ci, 0, 2)
        d_visit.append(rows)
        d_code.append(codes[pick])
        d_rank.append(rank)
        for code, p in c["dx_extra"]:
            sel = rows[rng.random(rows.size) < p]
            d_visit.append(sel)
            d_code.append(np.full(sel.size, dx_i[code]))
            d_rank.append(np.where(primary[sel] == ci, 1, 3))
    rare = np.array([dx_i[c] for c in K.RARE_DIAGNOSES])
    k_rare = rng.poisson(0.8, V)
    rows = np.repeat(np.arange(V), k_rare)
    zipf = 1.0 / np.arange(1, len(rare) + 1) ** 1.1
    d_visit.append(rows)
    d_code.append(rare[_choice(rng, zipf, rows.size)])
    d_rank.append(np.full(rows.size, 4))
    diag = _finalise_codes(rng, d_visit, d_code, d_rank, len(dx_codes))

    # ---- procedures -----------------------------------------------------------------------
    p_visit, p_code, p_rank = [], [], []
    for ci, c in enumerate(conds):
        rows = np.flatnonzero(active[:, ci])
        for code, p in c.get("px", {}).items():
            sel = rows[rng.random(rows.size) < p]
            p_visit.append(sel)
            p_code.append(np.full(sel.size, px_i[code]))
            p_rank.append(np.where(primary[sel] == ci, 0, 1))
    for code, p in K.BASE_PROCEDURES.items():
        sel = np.flatnonzero(rng.random(V) < p)
        p_visit.append(sel)
        p_code.append(np.full(sel.size, px_i[code]))
        p_rank.append(np.full(sel.size, 2))
    for code, ps in K.SEVERITY_PROCEDURES.items():
        sel = np.flatnonzero(rng.random(V) < np.asarray(ps)[severity])
        p_visit.append(sel)
        p_code.append(np.full(sel.size, px_i[code]))
        p_rank.append(np.full(sel.size, 1))
    rare = np.array([px_i[c] for c in K.RARE_PROCEDURES])
    rows = np.repeat(np.arange(V), rng.poisson(0.15, V))
    zipf = 1.0 / np.arange(1, len(rare) + 1) ** 1.1
    p_visit.append(rows)
    p_code.append(rare[_choice(rng, zipf, rows.size)])
    p_rank.append(np.full(rows.size, 3))
    proc = _finalise_codes(rng, p_visit, p_code, p_rank, len(px_codes))

    # ---- medication classes per visit -------------------------------------------------------
    m_visit, m_atc = [], []
    for ci, c in enumerate(conds):
        rows = np.flatnonzero(active[:, ci])
        for atc, p in c["meds"].items():
            if c["kind"] == "chronic":  # the patient's regimen, continued at each admission
                regimen = rng.random(n) < p
                sel = rows[regimen[pat[rows]] & (rng.random(rows.size) < CHRONIC_CONTINUE_P)]
            else:
                sel = rows[rng.random(rows.size) < p]
            m_visit.append(sel)
            m_atc.append(np.full(sel.size, atc_i[atc]))
    for atc, p in K.BASE_MEDS.items():
        sel = np.flatnonzero(rng.random(V) < p)
        m_visit.append(sel)
        m_atc.append(np.full(sel.size, atc_i[atc]))
    no_rx = rng.random(V) < 0.02  # a few admissions without any PRESCRIPTIONS row, as in MIMIC
    med = np.zeros((V, len(atc3s)), dtype=bool)
    med[np.concatenate(m_visit), np.concatenate(m_atc)] = True
    med[no_rx] = False
    mv, ma = np.nonzero(med)

    # ---- prescription rows ------------------------------------------------------------------
    cat = drug_catalog()["items"]
    n_items = len(cat)
    drug_of_item = cat["drug"].to_numpy()
    item_start = np.searchsorted(drug_of_item, np.arange(len(K.DRUGS)))
    item_count = np.bincount(drug_of_item, minlength=len(K.DRUGS))
    drug_atc = np.array([atc_i[d[0][:4]] for d in K.DRUGS])
    drug_pick = np.zeros(mv.size, dtype=np.int64)
    for a in range(len(atc3s)):
        sel = np.flatnonzero(ma == a)
        drugs = np.flatnonzero(drug_atc == a)
        if sel.size == 0:
            continue
        if drugs.size == 0:
            raise ValueError(f"knowledge.DRUGS has no drug for ATC3 class {atc3s[a]}")
        w = 1.0 / np.arange(1, drugs.size + 1) ** 0.8
        drug_pick[sel] = drugs[_choice(rng, w, sel.size)]
    n_rows = 1 + rng.poisson(0.8, mv.size)
    r_visit = np.repeat(mv, n_rows)
    r_drug = np.repeat(drug_pick, n_rows)
    u = rng.random(r_drug.size)
    cnt = item_count[r_drug]
    j = np.where(cnt == 3, (u > 0.6).astype(int) + (u > 0.85), (u > 0.7).astype(int))
    r_item = item_start[r_drug] + j
    # NDC-0 bases (bags, syringes) as in MIMIC
    k0 = rng.poisson(1.2, V) * ~no_rx
    z_visit = np.arange(V).repeat(k0)
    z_item = n_items + _choice(rng, [3, 2, 3, 2, 1, 0.2], z_visit.size)
    r_visit = np.concatenate([r_visit, z_visit])
    r_item = np.concatenate([r_item, z_item])
    o = np.argsort(r_visit, kind="stable")
    r_visit, r_item = r_visit[o], r_item[o]
    R = r_visit.size

    icu = (severity >= 2) | (rng.random(V) < 0.3)
    icustay = rng.choice(max(100_000, 2 * V), V, replace=False) + 200_000
    r_icu_null = ~icu[r_visit] | (rng.random(R) < 0.25)
    day_of = (admit // DAY) * DAY
    los_days = np.maximum((disch - day_of) // DAY, 0)
    start = day_of[r_visit] + (rng.random(R) * (los_days[r_visit] + 1)).astype(np.int64) * DAY
    end = np.minimum(
        start + rng.integers(1, 6, R) * DAY, day_of[r_visit] + (los_days[r_visit] + 1) * DAY
    )

    # ---- identifiers ------------------------------------------------------------------------
    subject_id = np.sort(rng.choice(max(100_000, 2 * n), n, replace=False) + 1)
    hadm_span = max(900_000, 4 * V)
    hadm_id = rng.choice(hadm_span, V, replace=False) + 100_000  # random: not chronological
    v_subject = subject_id[pat]

    # ---- tables -----------------------------------------------------------------------------
    zero_names = [nm for nm, _ in K.NDC_ZERO_ITEMS]
    item_cols = {
        "DRUG": cat["name"].tolist() + zero_names,
        "DRUG_NAME_GENERIC": cat["name"].tolist() + zero_names,
        "DRUG_NAME_POE": cat["name"].tolist() + [None] * len(zero_names),
        "DRUG_TYPE": [
            "ADDITIVE" if a == "B05X" else ("BASE" if a == "B05B" else "MAIN") for a in cat["atc3"]
        ]
        + [t for _, t in K.NDC_ZERO_ITEMS],
        "FORMULARY_DRUG_CD": cat["formulary"].tolist() + [s.upper()[:6] for s in zero_names],
        "GSN": cat["gsn"].tolist() + [None] * len(zero_names),
        "NDC": cat["ndc"].tolist() + ["0"] * len(zero_names),
        "PROD_STRENGTH": cat["strength"].tolist() + ["100mL Bag"] * len(zero_names),
        "DOSE_VAL_RX": cat["dose_val"].tolist() + ["100"] * len(zero_names),
        "DOSE_UNIT_RX": cat["dose_unit"].tolist() + ["mL"] * len(zero_names),
        "FORM_VAL_DISP": ["1"] * n_items + ["100"] * len(zero_names),
        "FORM_UNIT_DISP": cat["form_unit"].tolist() + ["mL"] * len(zero_names),
        "ROUTE": cat["route"].tolist() + ["IV"] * len(zero_names),
    }
    ndc_null = rng.random(R) < 0.02  # NDC left empty, as happens in MIMIC
    presc = {
        "ROW_ID": pa.array(np.arange(1, R + 1)),
        "SUBJECT_ID": pa.array(v_subject[r_visit]),
        "HADM_ID": pa.array(hadm_id[r_visit]),
        "ICUSTAY_ID": pa.array(icustay[r_visit], mask=r_icu_null),
        "STARTDATE": _dates(start),
        "ENDDATE": _dates(end),
    }
    for col in COLUMNS["PRESCRIPTIONS"][6:]:
        presc[col] = _take(item_cols[col], r_item, ndc_null if col == "NDC" else None)
    presc = pa.table({c: presc[c] for c in COLUMNS["PRESCRIPTIONS"]})

    ed = adm_type == 1
    edreg = admit - rng.integers(60, 10 * 60, V) * 60
    dx_text = [c["name"].upper() for c in conds]
    dx_text = [
        t + ("\\" + "SURGERY /SDA" if c.get("elective", 0) > 0.5 else "")
        for t, c in zip(dx_text, conds, strict=True)
    ]
    admissions = pa.table(
        {
            "ROW_ID": pa.array(np.arange(1, V + 1)),
            "SUBJECT_ID": pa.array(v_subject),
            "HADM_ID": pa.array(hadm_id),
            "ADMITTIME": _dates(admit),
            "DISCHTIME": _dates(disch),
            "DEATHTIME": _dates(disch, ~hosp_death),
            "ADMISSION_TYPE": _take(adm_types, adm_type),
            "ADMISSION_LOCATION": _take(loc_labels, adm_loc),
            "DISCHARGE_LOCATION": _take(dis_labels, discharge),
            "INSURANCE": _take(ins_labels, insurance),
            "LANGUAGE": _take(lang_labels, lang_choice[pat], lang_missing[pat]),
            "RELIGION": _take([r for r, _ in K.RELIGIONS], religion[pat]),
            "MARITAL_STATUS": _take(mar_labels, marital[pat], marital_missing[pat]),
            "ETHNICITY": _take(eth_labels, eth_choice[pat]),
            "EDREGTIME": _dates(edreg, ~ed),
            "EDOUTTIME": _dates(admit + 30 * 60, ~ed),
            "DIAGNOSIS": _take(dx_text, primary),
            "HOSPITAL_EXPIRE_FLAG": pa.array(hosp_death.astype(np.int64)),
            "HAS_CHARTEVENTS_DATA": pa.array((rng.random(V) < 0.97).astype(np.int64)),
        }
    )

    # patients: DOB from the age at the first admission; >89 shifted to ~300 years as in MIMIC
    dob_age = np.where(age0 >= 89.0, 300.0 + (age0 - 89.0), age0)
    dob = t0 - (dob_age * YEAR).astype(np.int64)
    dob = dob - dob % DAY
    last_disch = disch[last]
    hosp_dead_p = hosp_death[last]
    dod = np.where(
        hosp_dead_p,
        last_disch,
        last_disch + ((rng.exponential(700.0, n) + 1) * DAY).astype(np.int64),
    )
    dod = dod - dod % DAY
    dead = hosp_dead_p | died_later
    ssn_known = dead & (~hosp_dead_p | (rng.random(n) < 0.6))
    patients = pa.table(
        {
            "ROW_ID": pa.array(np.arange(1, n + 1)),
            "SUBJECT_ID": pa.array(subject_id),
            "GENDER": _take(["M", "F"], female.astype(np.int64)),
            "DOB": _dates(dob),
            "DOD": _dates(dod, ~dead),
            "DOD_HOSP": _dates(dod, ~hosp_dead_p),
            "DOD_SSN": _dates(dod, ~ssn_known),
            "EXPIRE_FLAG": pa.array(dead.astype(np.int64)),
        }
    )

    def code_table(fin, codes):
        visit, code, seq = fin
        return pa.table(
            {
                "ROW_ID": pa.array(np.arange(1, visit.size + 1)),
                "SUBJECT_ID": pa.array(v_subject[visit]),
                "HADM_ID": pa.array(hadm_id[visit]),
                "SEQ_NUM": pa.array(seq),
                "ICD9_CODE": _take(codes, code),
            }
        )

    def dictionary(titles: dict[str, str]) -> pa.Table:
        codes = list(titles)
        return pa.table(
            {
                "ROW_ID": pa.array(np.arange(1, len(codes) + 1)),
                "ICD9_CODE": _labels(codes),
                "SHORT_TITLE": _labels([_short_title(titles[c]) for c in codes]),
                "LONG_TITLE": _labels([titles[c] for c in codes]),
            }
        )

    tables = {
        "PATIENTS": patients,
        "ADMISSIONS": admissions,
        "DIAGNOSES_ICD": code_table(diag, dx_codes),
        "PROCEDURES_ICD": code_table(proc, px_codes),
        "PRESCRIPTIONS": presc,
        "D_ICD_DIAGNOSES": dictionary(K.DIAGNOSES),
        "D_ICD_PROCEDURES": dictionary(K.PROCEDURES),
    }
    tables.update(_aux_tables(cat))
    return tables


def _finalise_codes(rng, visits, codes, ranks, n_codes):
    """Deduplicate (visit, code), keep the best rank, order by rank inside a visit -> SEQ_NUM."""
    visit = np.concatenate(visits).astype(np.int64)
    code = np.concatenate(codes).astype(np.int64)
    rank = np.concatenate(ranks).astype(np.int64)
    key = np.sort((visit * n_codes + code) * 8 + rank)  # one int64 sort instead of a lexsort
    pair = key // 8
    first = np.ones(key.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    pair, rank = pair[first], key[first] % 8
    visit, code = pair // n_codes, pair % n_codes
    tie = rng.integers(0, 1 << 20, visit.size)
    o = np.argsort((visit << 24) + (rank << 20) + tie, kind="stable")
    visit, code = visit[o], code[o]
    return visit, code, _rank_within(visit) + 1


def _aux_tables(cat: pd.DataFrame) -> dict[str, pa.Table]:
    mapped = cat[cat["in_ndc_map"]]
    in_atc = mapped[mapped["in_atc_map"]]
    months = (np.arange(len(in_atc)) % 12) + 1
    atc_rows = [(c, K.ATC1[c]) for c in K.ATC1] + [(c, K.ATC3[c]) for c in K.ATC3]
    atc_rows.sort()
    na = ["NA"] * len(atc_rows)
    return {
        "NDC2RXNORM": pa.table(
            {"NDC": _labels(mapped["ndc"].tolist()), "RXCUI": _labels(mapped["rxcui"].tolist())}
        ),
        "RXCUI2ATC4": pa.table(
            {
                "YEAR": pa.array(np.full(len(in_atc), 2016)),
                "MONTH": pa.array(months),
                "NDC": _labels(in_atc["ndc"].tolist()),
                "RXCUI": _labels(in_atc["rxcui"].tolist()),
                "ATC4": _labels(in_atc["atc4"].tolist()),
            }
        ),
        "WHO_ATC": pa.table(
            {
                "atc_code": _labels([c for c, _ in atc_rows]),
                "atc_name": _labels([nm for _, nm in atc_rows]),
                "ddd": _labels(na),
                "uom": _labels(na),
                "adm_r": _labels(na),
                "note": _labels(na),
            }
        ),
        "DDI_PAIRS": pa.table(
            {
                "atc3_a": _labels([a for a, _ in K.DDI_PAIRS]),
                "atc3_b": _labels([b for _, b in K.DDI_PAIRS]),
            }
        ),
    }


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def generate_cohort(n_patients: int, seed: int) -> dict[str, pd.DataFrame]:
    """Simulate `n_patients` patients; return the raw MIMIC-III tables and the aux tables.

    Keys: PATIENTS, ADMISSIONS, DIAGNOSES_ICD, PROCEDURES_ICD, PRESCRIPTIONS, D_ICD_DIAGNOSES,
    D_ICD_PROCEDURES (UPPER-case MIMIC-III v1.4 columns; codes, NDCs and dates are strings; ids
    are Int64 with nulls where MIMIC has them) and the aux tables NDC2RXNORM (NDC, RXCUI),
    RXCUI2ATC4 (YEAR, MONTH, NDC, RXCUI, ATC4), WHO_ATC (atc_code, atc_name, ddd, uom, adm_r,
    note), DDI_PAIRS (atc3_a, atc3_b).
    """
    tables = _simulate(n_patients, seed)
    return {name: _to_pandas(t) for name, t in tables.items()}


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def write_cohort(raw_dir, aux_dir, n_patients: int, seed: int) -> dict:
    """Generate the cohort and write it as real MIMIC-III + aux files; return a manifest.

    Refuses to write into a folder that holds a PATIENTS.csv without a synthetic manifest, so a
    misconfigured `raw_dir` can never overwrite real MIMIC data.
    """
    raw_dir, aux_dir = Path(raw_dir), Path(aux_dir)
    if (raw_dir / "PATIENTS.csv").exists() and not (raw_dir / MANIFEST_NAME).exists():
        raise FileExistsError(
            f"raw_dir {raw_dir} already holds PATIENTS.csv but no {MANIFEST_NAME}: it looks like real "
            "MIMIC data, refusing to overwrite it with the synthetic cohort. Set `source` to "
            "mimic3/mimic4 or point `raw_dir` to another folder."
        )
    tables = _simulate(n_patients, seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    aux_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    opts = pacsv.WriteOptions(quoting_style="needed")
    for name in RAW_TABLES:
        path = raw_dir / f"{name}.csv"
        pacsv.write_csv(tables[name], path, opts)
        paths[name] = str(path)
    for key in ("RXCUI2ATC4", "WHO_ATC", "DDI_PAIRS"):
        path = aux_dir / AUX_FILES[key]
        pacsv.write_csv(tables[key], path, opts)
        paths[key] = str(path)
    ndc = tables["NDC2RXNORM"]
    body = ", ".join(
        f"'{k}': u'{v}'"
        for k, v in zip(ndc["NDC"].to_pylist(), ndc["RXCUI"].to_pylist(), strict=True)
    )
    path = aux_dir / AUX_FILES["NDC2RXNORM"]
    path.write_text("{" + body + "}")
    paths["NDC2RXNORM"] = str(path)
    manifest = {
        "generator": "leader_kedro.synthetic",
        "version": GENERATOR_VERSION,
        "n_patients": int(n_patients),
        "seed": int(seed),
        "paths": paths,
        "row_counts": {k: int(t.num_rows) for k, t in tables.items()},
    }
    (raw_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


# --------------------------------------------------------------------------------------------
# benchmark CLI
# --------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m leader_kedro.synthetic",
        description="Generate the synthetic MIMIC-III cohort and print wall time and peak RSS.",
    )
    ap.add_argument("--patients", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, required=True, help="raw_dir; aux files go to OUT/aux")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tables = _simulate(args.patients, args.seed)
    t_gen = time.perf_counter() - t0
    del tables
    t1 = time.perf_counter()
    manifest = write_cohort(args.out, args.out / "aux", args.patients, args.seed)
    t_all = time.perf_counter() - t1
    print(f"patients={args.patients} seed={args.seed}")
    print(f"generate only: {t_gen:.2f} s")
    print(f"generate + write CSVs: {t_all:.2f} s")
    print(f"peak RSS: {_peak_rss_mb():.0f} MiB")
    for k, v in manifest["row_counts"].items():
        print(f"  {k}: {v} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
