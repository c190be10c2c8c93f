"""Synthetic MIMIC-III cohort: the embedded default data source.

`generate_cohort` simulates patients from the curated knowledge table in `knowledge.py` and returns
the raw MIMIC-III v1.4 tables (UPPER-case columns, codes as strings, dates as
'YYYY-MM-DD HH:MM:SS' shifted into the 22nd century) plus the auxiliary mapping tables of the
GAMENet/SafeDrug lineage. `write_cohort` writes them where the ingest stage reads real data, so the
ingest code path is the same for synthetic and real MIMIC.

Everything is vectorised with numpy (loops run over conditions, classes, drugs and visit positions,
never over patients) and deterministic from `numpy.random.default_rng(seed)`.

The generator also writes what it knows and no model can see: each admission's true probability of
every ATC3 class (``SYNTHETIC_ORACLE.parquet``), the ceiling of the evaluation (docs/synthetic.md).

Command line benchmark: ``python -m leader_kedro.synthetic.generator --patients 100000 --out /tmp/x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from leader_kedro.config import as_dict, build_config
from leader_kedro.synthetic import knowledge as K

GENERATOR_VERSION = "2"
MECHANISMS = ("realistic", "dense")


@dataclass(frozen=True)
class SyntheticConfig:
    """``params:synthetic``: the embedded cohort written to raw_dir when ``source: synthetic``.

    The mechanism switches (docs/synthetic.md, "What makes history, interactions and knowledge
    matter") apply to ``mechanism: realistic``. ``mechanism: dense`` is the negative control: the
    first generator's mechanism (drug classes a noisy-OR of coded conditions plus a routine that
    depends on nothing, common codes only), i.e. every switch below off and chronic conditions coded
    at 92% of admissions.
    """

    n_patients: int = 1500
    seed: int = 42
    mechanism: str = "realistic"  # realistic | dense
    tail_share: float = 0.12  # P(a condition is coded with a rare variant of its codes, DX_TAIL)
    chronic_coded_p: float = 0.75  # P(a present chronic condition is coded in an admission)
    regimen_continue_p: float = 0.9  # P(a class of a chronic regimen is given at an admission)
    routine_patient_sd: float = 1.5  # sd of each patient's own log-odds for each routine class
    event_regimens: bool = True  # acute events (MI, VTE, stroke, ...) start chronic regimens
    interactions: bool = True  # DRUG_RULES: classes that need two conditions, an age or a sex
    contraindications: bool = (
        True  # classes withheld by a condition, an age or an interacting class
    )

    def __post_init__(self):
        if self.mechanism not in MECHANISMS:
            raise ValueError(
                f"synthetic.mechanism must be one of {MECHANISMS}, got {self.mechanism!r}"
            )
        for name in ("tail_share", "chronic_coded_p", "regimen_continue_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"synthetic.{name} must be in [0, 1], got {value!r}")
        if self.routine_patient_sd < 0:
            raise ValueError(
                f"synthetic.routine_patient_sd must be >= 0, got {self.routine_patient_sd!r}"
            )

    def effective(self) -> SyntheticConfig:
        """The switches actually used: ``dense`` turns every mechanism off."""
        if self.mechanism == "realistic":
            return self
        return dataclasses.replace(
            self,
            tail_share=0.0,
            chronic_coded_p=DENSE_CHRONIC_CODED_P,
            routine_patient_sd=0.0,
            event_regimens=False,
            interactions=False,
            contraindications=False,
        )


def synthetic_config(params) -> SyntheticConfig:
    return build_config(SyntheticConfig, params, "synthetic")


MANIFEST_NAME = "SYNTHETIC_MANIFEST.json"
ORACLE_NAME = "SYNTHETIC_ORACLE.parquet"
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
_COLUMN_LISTS = {
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
COLUMNS: dict[str, list[str]] = {k: v.split(",") for k, v in _COLUMN_LISTS.items()}

DAY = 86_400
YEAR = 365.25 * DAY
EPOCH_2100 = int(np.datetime64("2100-01-01T00:00:00", "s").astype(np.int64))
ETH_GROUPS = list(K.ETHNICITY_GROUP_SHARE)
DENSE_CHRONIC_CODED_P = 0.92  # the first generator's coding rate of chronic conditions
# calibration to the MIMIC-III demo (docs/synthetic.md; synthetic/calibration.py checks it)
MULTI_VISIT_BASE_LOGIT = -1.9  # share of patients with more than one admission
FEMALE_SHARE = 0.47
AGE_BETA = (3.4, 1.5)  # age at the first admission: 18 + 77 * Beta(a, b)
INCIDENTAL_DX_RATE = 4.0  # Poisson mean of incidental diagnosis codes per admission
RARE_PX_RATE = 0.5  # Poisson mean of incidental procedure codes per admission
URGENT_P = 0.02  # share of URGENT among the non-elective admissions
LANGUAGE_MISSING_P = 0.42  # LANGUAGE left empty (per patient)
MARITAL_MISSING_P = 0.12  # MARITAL_STATUS left empty (per patient)
ROWS_PER_CLASS = 0.8  # PRESCRIPTIONS rows per (admission, class): 1 + Poisson(ROWS_PER_CLASS)
NDC_EMPTY_P = 0.02  # share of PRESCRIPTIONS rows whose NDC is left empty


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
    draws = np.asarray(rng.random(probs.shape[0]) if u is None else u)
    return np.minimum((draws[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


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
    return _timestamps(seconds, mask).cast(pa.string())


def _timestamps(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """The dates of ``_dates`` kept as timestamps (8 bytes a row); ``_as_text`` casts them.
    (PRESCRIPTIONS' text columns are kept dictionary-encoded the same way.)"""
    return pa.array(seconds.astype("datetime64[s]"), mask=mask)


def _as_text(table: pa.Table) -> pa.Table:
    """Dictionary-encoded text and timestamp columns as the strings they stand for."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type) or pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def _write_csv(table: pa.Table, path: Path, opts: pacsv.WriteOptions, rows: int = 1 << 20):
    """``pacsv.write_csv`` slice by slice: only one slice at a time is decoded to text, so the
    17-million-row PRESCRIPTIONS table never exists as strings in memory."""
    with pacsv.CSVWriter(path, _as_text(table.slice(0, 0)).schema, write_options=opts) as out:
        for start in range(0, table.num_rows, rows):
            out.write_table(_as_text(table.slice(start, rows)))


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
# Each step below draws from the one shared generator; `_simulate` calls them in a fixed order, so
# the draws (and the cohort) depend only on the seed. Reordering two steps changes the cohort.


@dataclass(frozen=True)
class _Index:
    """Lookups into the knowledge table: conditions by kind, code -> position in its code list."""

    conds: list[dict]
    chronic: list[int]  # condition indices
    acute: list[int]
    name_to_i: dict[str, int]
    ch_pos: dict[int, int]  # condition index -> column in the [patients, chronic] arrays
    dx_codes: list[str]
    px_codes: list[str]
    atc3s: list[str]
    dx_i: dict[str, int]
    px_i: dict[str, int]
    atc_i: dict[str, int]
    tail: dict[
        int, np.ndarray
    ]  # condition index -> its rare variant codes (DX_TAIL), as dx indices


@dataclass
class _Patients:
    """Per-patient draws: profile and chronic conditions."""

    n: int
    female: np.ndarray
    eth: np.ndarray  # index into ETH_GROUPS
    age0: np.ndarray  # age at the first admission
    frailty: np.ndarray
    present0: np.ndarray  # [n, chronic] present at the first admission
    onset: np.ndarray  # [n, chronic] visit index of the onset (0 = present at the first)
    burden: np.ndarray  # number of chronic conditions present at the first admission


@dataclass
class _Visits:
    """Per-admission arrays, sorted by patient then visit index (V admissions in all)."""

    V: int
    pat: np.ndarray  # patient of each admission
    vidx: np.ndarray  # 0-based visit index inside the patient
    t0: np.ndarray  # [n] first admission time (seconds), before the admit-hour jitter
    active: np.ndarray  # [V, conditions]
    primary: np.ndarray  # primary (acute) condition
    severity: np.ndarray
    admit: np.ndarray
    disch: np.ndarray
    age_v: np.ndarray  # age at admission


@dataclass
class _Outcomes:
    last: np.ndarray  # [V] the patient's last admission
    hosp_death: np.ndarray  # [V] died in hospital (only at the last admission)
    died_later: np.ndarray  # [n] died after the last discharge
    discharge: pa.Array  # DISCHARGE_LOCATION


@dataclass
class _Medications:
    visit: np.ndarray  # admission of each (admission, class) given
    atc: np.ndarray  # class index of each
    no_rx: np.ndarray  # [V] admissions without any PRESCRIPTIONS row
    oracle: np.ndarray  # [V, classes] float32: the true probability that the class is a label


@dataclass
class _Prescriptions:
    visit: np.ndarray  # admission of each PRESCRIPTIONS row
    item: np.ndarray  # drug catalogue row (n_items + k for the k-th NDC-0 item)
    icustay: np.ndarray  # [V] ICU stay id of each admission
    icu_null: np.ndarray  # ICUSTAY_ID left empty
    start: np.ndarray
    end: np.ndarray


def _simulate(
    n_patients: int, seed: int, params: SyntheticConfig | None = None
) -> dict[str, pa.Table]:
    _check_args(n_patients, seed)
    cfg = (params or SyntheticConfig()).effective()
    rng = np.random.default_rng(int(seed))
    ix = _knowledge_index()
    pts = _simulate_patients(rng, ix, int(n_patients))
    vis = _simulate_visits(rng, ix, pts, cfg)
    adm_type, profile = _admission_profile(rng, ix, pts, vis)
    outcomes = _outcomes(rng, pts, vis)
    diag = _diagnoses(rng, ix, pts.n, vis, cfg)
    proc = _procedures(rng, ix, vis)
    cat = drug_catalog()["items"]
    meds = _medication_classes(rng, ix, pts, vis, cfg, cat)
    rx = _simulate_prescriptions(rng, ix, cat, vis, meds.visit, meds.atc, meds.no_rx)
    subject_id, hadm_id = _identifiers(rng, pts.n, vis.V)
    v_subject = subject_id[vis.pat]
    # built in this order (each draws from rng), listed in the MIMIC order below
    presc = _prescriptions_table(rng, cat, rx, v_subject, hadm_id)
    admissions = _admissions_table(rng, ix, vis, adm_type, profile, outcomes, v_subject, hadm_id)
    patients = _patients_table(rng, pts, vis, outcomes, subject_id)
    tables = {
        "PATIENTS": patients,
        "ADMISSIONS": admissions,
        "DIAGNOSES_ICD": _code_table(diag, ix.dx_codes, v_subject, hadm_id),
        "PROCEDURES_ICD": _code_table(proc, ix.px_codes, v_subject, hadm_id),
        "PRESCRIPTIONS": presc,
        "D_ICD_DIAGNOSES": _icd_dictionary(K.DIAGNOSES),
        "D_ICD_PROCEDURES": _icd_dictionary(K.PROCEDURES),
        "ORACLE": _oracle_table(meds.oracle, ix.atc3s, hadm_id),
    }
    tables.update(_aux_tables(cat))
    return tables


def _check_args(n_patients: int, seed: int) -> None:
    if not isinstance(n_patients, (int, np.integer)) or n_patients < 1:
        raise ValueError(f"synthetic.n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"synthetic.seed must be an integer, got {seed!r}")


def _knowledge_index() -> _Index:
    conds = K.CONDITIONS
    chronic = [i for i, c in enumerate(conds) if c["kind"] == "chronic"]
    dx_codes, px_codes, atc3s = list(K.DIAGNOSES), list(K.PROCEDURES), list(K.ATC3)
    return _Index(
        conds=conds,
        chronic=chronic,
        acute=[i for i, c in enumerate(conds) if c["kind"] == "acute"],
        name_to_i={c["name"]: i for i, c in enumerate(conds)},
        ch_pos={ci: j for j, ci in enumerate(chronic)},
        dx_codes=dx_codes,
        px_codes=px_codes,
        atc3s=atc3s,
        dx_i={c: i for i, c in enumerate(dx_codes)},
        px_i={c: i for i, c in enumerate(px_codes)},
        atc_i={c: i for i, c in enumerate(atc3s)},
        tail={
            i: np.array([dx_codes.index(code) for code in K.DX_TAIL[c["name"]]], dtype=np.int64)
            for i, c in enumerate(conds)
            if K.DX_TAIL.get(c["name"])
        },
    )


# ---- patients -------------------------------------------------------------------------------
def _profile_logit(c: dict, age: np.ndarray, female: np.ndarray, eth: np.ndarray) -> np.ndarray:
    """Age, sex and ethnicity log-odds of condition `c` (female and eth aligned with age)."""
    out = c["age"] * (age - 65.0) / 10.0
    fo = c["female"]
    out = out + np.where(female, math.log(fo) if fo > 0 else -np.inf, 0.0)
    eth_or = np.array([math.log(c.get("eth", {}).get(g, 1.0)) for g in ETH_GROUPS])
    return out + eth_or[eth]


def _simulate_patients(rng: np.random.Generator, ix: _Index, n: int) -> _Patients:
    female = rng.random(n) < FEMALE_SHARE
    eth = _choice(rng, list(K.ETHNICITY_GROUP_SHARE.values()), n)
    age0 = 18.0 + 77.0 * rng.beta(*AGE_BETA, n)
    frailty = rng.normal(0.0, 1.0, n)
    present0, onset = _chronic_conditions(rng, ix, female, eth, age0, frailty)
    return _Patients(n, female, eth, age0, frailty, present0, onset, present0.sum(axis=1))


def _chronic_order(ix: _Index) -> list[int]:
    """The chronic conditions ordered so that links point to conditions computed earlier."""
    order: list[int] = []
    pending = list(ix.chronic)
    while pending:
        for ci in pending:
            if all(ix.name_to_i[k] in order for k in ix.conds[ci].get("link", {})):
                order.append(ci)
                pending.remove(ci)
                break
        else:
            raise ValueError("knowledge.CONDITIONS: circular chronic links")
    return order


def _chronic_conditions(rng, ix: _Index, female, eth, age0, frailty):
    """Chronic conditions: present at the first admission, or onset at a later admission.

    Returns (present0 [n, chronic], onset [n, chronic] = visit index of the onset).
    """
    n = age0.size
    present0 = np.zeros((n, len(ix.chronic)), dtype=bool)
    p_chronic = np.zeros((n, len(ix.chronic)))
    for ci in _chronic_order(ix):
        c, j = ix.conds[ci], ix.ch_pos[ci]
        lg = _logit(c["prev"]) + _profile_logit(c, age0, female, eth) + 0.45 * frailty
        for other, orr in c.get("link", {}).items():
            lg = lg + math.log(orr) * present0[:, ix.ch_pos[ix.name_to_i[other]]]
        p = _sigmoid(lg)
        p_chronic[:, j] = p
        present0[:, j] = rng.random(n) < p
    later = rng.geometric(np.clip(0.12 * p_chronic, 1e-4, 1.0)).astype(np.int32)
    return present0, np.where(present0, 0, later)


# ---- admissions: count, timing, conditions ----------------------------------------------------
def _simulate_visits(
    rng: np.random.Generator, ix: _Index, pts: _Patients, cfg: SyntheticConfig
) -> _Visits:
    n_visits = _visit_counts(rng, pts)
    pat = np.repeat(np.arange(pts.n), n_visits)
    vidx = _rank_within(pat)
    t0, cum_gap, start_of = _visit_gaps(rng, n_visits, vidx == 0)
    # primary reason (needs age at the visit; approximate with the age at the first visit plus
    # the cumulative gap, LOS is added afterwards and is small by comparison)
    age_approx = pts.age0[pat] + cum_gap / YEAR
    active, primary, severity = _conditions_by_visit(rng, ix, pts, pat, vidx, age_approx, cfg)
    admit, disch = _admission_times(rng, t0, pat, cum_gap, start_of, severity)
    age_v = pts.age0[pat] + (admit - t0[pat]) / YEAR
    return _Visits(pat.size, pat, vidx, t0, active, primary, severity, admit, disch, age_v)


def _conditions_by_visit(rng, ix: _Index, pts: _Patients, pat, vidx, age_approx, cfg):
    """Conditions, primary reason and severity of each admission, one visit position at a time.

    With ``event_regimens`` an acute event with a ``starts`` field (MI, VTE, stroke, ...) switches
    its chronic condition on from the patient's next admission: a regimen only history reveals.
    Returns (active [V, conditions], primary [V], severity [V]).
    """
    active = _chronic_active(ix, pts, pat, vidx)
    primary = np.zeros(pat.size, dtype=np.int64)
    severity = np.zeros(pat.size, dtype=np.int64)
    chronic = np.asarray(ix.chronic)
    starts = (
        [
            (ci, ix.ch_pos[ix.name_to_i[c["starts"]]], float(c.get("starts_p", 1.0)))
            for ci, c in enumerate(ix.conds)
            if c["kind"] == "acute" and "starts" in c
        ]
        if cfg.event_regimens
        else []
    )
    started = np.zeros((pts.n, len(ix.chronic)), dtype=bool)
    for t in range(int(vidx.max()) + 1 if vidx.size else 0):
        rows = np.flatnonzero(vidx == t)
        p_t = pat[rows]
        sub = active[rows]
        if starts and t > 0:
            sub[:, chronic] |= started[p_t]
        primary[rows] = _primary_reason(
            rng, ix, sub, age_approx[rows], pts.female[p_t], pts.eth[p_t]
        )
        severity[rows] = _acute_active(rng, ix, sub, primary[rows])
        active[rows] = sub
        for ci, j, p in starts:
            hit = sub[:, ci] & (rng.random(rows.size) < p)
            started[p_t[hit], j] = True
    return active, primary, severity


def _visit_counts(rng: np.random.Generator, pts: _Patients) -> np.ndarray:
    """Number of admissions: ~70% single; chronic burden and frailty raise readmission."""
    n = pts.n
    p_multi = _sigmoid(MULTI_VISIT_BASE_LOGIT + 0.2 * (pts.burden - 3.0) + 0.35 * pts.frailty)
    extra = np.where(rng.random(n) < p_multi, np.minimum(rng.geometric(0.5, n), 40), 0)
    return 1 + extra


def _visit_gaps(rng: np.random.Generator, n_visits: np.ndarray, first_visit: np.ndarray):
    """First admission time per patient and the cumulative gap (seconds) before each admission.

    Returns (t0 [n], cum_gap [V], start_of [V] = position of the patient's first admission).
    """
    n, V = n_visits.size, first_visit.size
    t0 = EPOCH_2100 + rng.integers(0, int(100 * YEAR), n)
    t0 = t0 - t0 % 60
    gap = np.where(first_visit, 0.0, (rng.lognormal(math.log(180.0), 1.3, V) + 2.0) * DAY)
    cum_gap = np.cumsum(gap)
    start_of = np.repeat(np.cumsum(n_visits) - n_visits, n_visits)
    cum_gap = cum_gap - cum_gap[start_of]
    return t0, cum_gap, start_of


def _chronic_active(ix: _Index, pts: _Patients, pat: np.ndarray, vidx: np.ndarray) -> np.ndarray:
    """[V, conditions] with the chronic conditions present at each admission (acute still off)."""
    active = np.zeros((pat.size, len(ix.conds)), dtype=bool)
    for ci in ix.chronic:
        active[:, ci] = pts.onset[pat, ix.ch_pos[ci]] <= vidx
    return active


def _primary_reason(rng, ix: _Index, active, age_v, female_v, eth_v) -> np.ndarray:
    """The primary (acute) condition of each admission: a Gumbel-max draw over the log-odds."""
    logits = np.empty((active.shape[0], len(ix.acute)))
    for a, ci in enumerate(ix.acute):
        c = ix.conds[ci]
        lg = math.log(c["prev"]) + _profile_logit(c, age_v, female_v, eth_v)
        for other, orr in c.get("link", {}).items():
            lg = lg + math.log(orr) * active[:, ix.name_to_i[other]]
        if "requires" in c:
            lg = np.where(active[:, ix.name_to_i[c["requires"]]], lg, -np.inf)
        logits[:, a] = lg
    primary_a = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return np.asarray(ix.acute)[primary_a]


def _acute_active(rng, ix: _Index, active: np.ndarray, primary: np.ndarray) -> np.ndarray:
    """Switch on the acute conditions (primary + secondary) in `active`; returns the severity."""
    V = active.shape[0]
    severity_of = np.array([c.get("severity", 0) for c in ix.conds])
    sev_mult = np.array([0.6, 1.0, 1.7, 2.6])[severity_of[primary]]
    for ci in ix.acute:
        c = ix.conds[ci]
        p_sec = c.get("secondary", 0.0) * sev_mult
        if "requires" in c:
            p_sec = p_sec * active[:, ix.name_to_i[c["requires"]]]
        active[:, ci] = (primary == ci) | (rng.random(V) < p_sec)
    return np.max(np.where(active, severity_of[None, :], 0), axis=1)


def _admission_times(rng, t0, pat, cum_gap, start_of, severity):
    """Admit and discharge times (seconds); returns (admit, disch)."""
    V = pat.size
    los = (rng.lognormal(math.log(3.5), 0.6, V) * (1.0 + 0.45 * severity) + 0.3) * DAY
    admit = t0[pat] + cum_gap.astype(np.int64)
    # add the previous stays' length so admissions never overlap
    cum_los = np.cumsum(los) - los
    cum_los = cum_los - cum_los[start_of]
    admit = admit + cum_los.astype(np.int64)
    admit = admit + rng.integers(0, 24 * 60, V) * 60
    admit = admit - admit % 60
    disch = admit + (los.astype(np.int64) // 60) * 60
    return admit, disch


# ---- admission profile ------------------------------------------------------------------------
def _admission_profile(rng, ix: _Index, pts: _Patients, vis: _Visits):
    """Returns (admission type codes [V], the ADMISSIONS profile columns by name)."""
    adm_type, cols = _admission_type_and_location(rng, ix, vis.primary)
    cols["INSURANCE"] = _insurance(rng, ix, pts, vis)
    cols["MARITAL_STATUS"] = _marital_status(rng, ix, pts, vis.pat)
    cols.update(_ethnicity_language_religion(rng, pts, vis.pat))
    return adm_type, cols


def _admission_type_and_location(rng, ix: _Index, primary: np.ndarray):
    V = primary.size
    elective_p = np.array([c.get("elective", 0.0) for c in ix.conds])[primary]
    adm_u = rng.random(V)
    adm_type = np.where(adm_u < elective_p, 0, np.where(rng.random(V) < URGENT_P, 2, 1))
    adm_types = ["ELECTIVE", "EMERGENCY", "URGENT"]
    loc_labels = ["PHYS REFERRAL/NORMAL DELI", "CLINIC REFERRAL/PREMATURE",
                  "EMERGENCY ROOM ADMIT", "TRANSFER FROM HOSP/EXTRAM", "TRANSFER FROM SKILLED NUR"]  # fmt: skip
    loc_p = np.array([[0.88, 0.12, 0, 0, 0], [0, 0.12, 0.7, 0.15, 0.03], [0, 0.2, 0, 0.8, 0]])
    adm_loc = _choice_rows(rng, loc_p[adm_type])
    cols = {
        "ADMISSION_TYPE": _take(adm_types, adm_type),
        "ADMISSION_LOCATION": _take(loc_labels, adm_loc),
    }
    return adm_type, cols


def _insurance(rng, ix: _Index, pts: _Patients, vis: _Visits) -> pa.Array:
    """Insurance: Medicare from 65 (and for dialysis), Medicaid tied to social risk."""
    ins_labels = ["Medicare", "Private", "Medicaid", "Government", "Self Pay"]
    active = vis.active
    esrd = active[:, ix.name_to_i["end stage renal disease"]]
    social = (
        active[:, ix.name_to_i["alcohol dependence"]]
        | active[:, ix.name_to_i["hiv"]]
        | active[:, ix.name_to_i["hepatitis c"]]
    )
    old = vis.age_v >= 65
    ins_p = np.where(
        old[:, None],
        np.array([0.9, 0.07, 0.02, 0.005, 0.005])[None, :],
        np.array([0.25, 0.46, 0.2, 0.05, 0.04])[None, :],
    ).copy()
    ins_p[~old & esrd, 0] += 0.9
    ins_p[~old & social, 2] += 0.35
    ins_p[~old & (pts.eth[vis.pat] == ETH_GROUPS.index("HISPANIC")), 2] += 0.15
    ins_u = rng.random(pts.n)[vis.pat]  # one latent per patient: stable unless age moves
    return _take(ins_labels, _choice_rows(rng, ins_p, ins_u))


def _marital_status(rng, ix: _Index, pts: _Patients, pat: np.ndarray) -> pa.Array:
    """Marital status by age at first admission (stable per patient), missing for ~12%."""
    mar_labels = ["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "SEPARATED", "LIFE PARTNER",
                  "UNKNOWN (DEFAULT)"]  # fmt: skip
    age_band = np.digitize(pts.age0, [30, 65, 80])
    mar_p = np.array(
        [
            [0.15, 0.8, 0.0, 0.02, 0.01, 0.015, 0.005],
            [0.5, 0.32, 0.03, 0.11, 0.02, 0.01, 0.01],
            [0.56, 0.15, 0.14, 0.11, 0.02, 0.005, 0.015],
            [0.4, 0.12, 0.4, 0.06, 0.005, 0.0, 0.015],
        ]
    )[age_band].copy()
    alcohol0 = pts.present0[:, ix.ch_pos[ix.name_to_i["alcohol dependence"]]]
    mar_p[alcohol0, 1] += 0.25
    mar_p[alcohol0, 3] += 0.15
    marital = _choice_rows(rng, mar_p)
    marital_missing = rng.random(pts.n) < MARITAL_MISSING_P
    return _take(mar_labels, marital[pat], marital_missing[pat])


def _ethnicity_language_religion(rng, pts: _Patients, pat: np.ndarray) -> dict[str, pa.Array]:
    """Ethnicity label, language (missing for ~25%), religion: per patient, as visit columns."""
    n, eth = pts.n, pts.eth
    eth_labels: list[str] = []
    lang_labels: list[str] = []
    eth_choice = np.zeros(n, dtype=np.int64)
    lang_choice = np.zeros(n, dtype=np.int64)
    for g, group in enumerate(ETH_GROUPS):
        sel = np.flatnonzero(eth == g)
        opts = K.ETHNICITIES[group]
        eth_choice[sel] = len(eth_labels) + _choice(rng, [w for _, w in opts], len(sel))
        eth_labels += [lab for lab, _ in opts]
        lopts = K.LANGUAGES[group]
        lang_choice[sel] = len(lang_labels) + _choice(rng, [w for _, w in lopts], len(sel))
        lang_labels += [lab for lab, _ in lopts]
    lang_missing = rng.random(n) < LANGUAGE_MISSING_P
    religion = _choice(rng, [w for _, w in K.RELIGIONS], n)
    return {
        "LANGUAGE": _take(lang_labels, lang_choice[pat], lang_missing[pat]),
        "RELIGION": _take([r for r, _ in K.RELIGIONS], religion[pat]),
        "ETHNICITY": _take(eth_labels, eth_choice[pat]),
    }


# ---- outcomes ---------------------------------------------------------------------------------
def _outcomes(rng, pts: _Patients, vis: _Visits) -> _Outcomes:
    pat, severity, age_v = vis.pat, vis.severity, vis.age_v
    last = np.r_[pat[1:] != pat[:-1], True]
    p_die = np.array([0.01, 0.03, 0.09, 0.22])[severity] * np.exp(0.25 * (age_v - 65) / 10)
    hosp_death = last & (rng.random(vis.V) < p_die)
    died_later = rng.random(pts.n) < _sigmoid(-1.6 + 0.5 * (pts.age0 - 65) / 10 + 0.3 * pts.burden)
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
    return _Outcomes(last, hosp_death, died_later, _take(dis_labels, discharge))


# ---- diagnoses and procedures -----------------------------------------------------------------
def _rare_codes(rng, V: int, rare_codes: list[int], rate: float, rank: int):
    """Poisson(rate) long-tail codes per admission, Zipf-weighted; returns (visit, code, rank)."""
    rare = np.array(rare_codes)
    rows = np.repeat(np.arange(V), rng.poisson(rate, V))
    zipf = 1.0 / np.arange(1, len(rare) + 1) ** 1.1
    return rows, rare[_choice(rng, zipf, rows.size)], np.full(rows.size, rank)


def _condition_codes(rng, ix: _Index, ci: int, size: int, tail_share: float) -> np.ndarray:
    """Diagnosis codes (dx indices) of condition ``ci``: its main codes by weight, or with
    probability ``tail_share`` a rare variant from its long tail (uniformly)."""
    c = ix.conds[ci]
    codes = np.array([ix.dx_i[code] for code, _ in c["dx"]])
    pick = codes[_choice(rng, [w for _, w in c["dx"]], size)]
    tail = ix.tail.get(ci)
    if tail is not None and tail_share > 0:
        use = rng.random(size) < tail_share
        pick = np.where(use, tail[rng.integers(0, tail.size, size)], pick)
    return pick


def _diagnoses(rng, ix: _Index, n: int, vis: _Visits, cfg: SyntheticConfig):
    """DIAGNOSES_ICD as (visit, code, SEQ_NUM): condition codes, their extras, incidental codes.

    SEQ_NUM puts the primary reason first, then its extra codes, the secondary acute conditions,
    the chronic conditions and the incidental codes (ties in random order).
    """
    pat, active, primary = vis.pat, vis.active, vis.primary
    d_visit, d_code, d_rank = [], [], []
    chronic_code = {ci: _condition_codes(rng, ix, ci, n, cfg.tail_share) for ci in ix.chronic}
    for ci, c in enumerate(ix.conds):
        is_chronic = c["kind"] == "chronic"
        mask = active[:, ci]
        if is_chronic:
            mask = mask & (rng.random(vis.V) < cfg.chronic_coded_p)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        pick = _condition_codes(rng, ix, ci, rows.size, cfg.tail_share)
        if is_chronic:  # the patient's own code for the condition, at most admissions
            keep = rng.random(rows.size) < 0.85
            pick = np.where(keep, chronic_code[ci][pat[rows]], pick)
            rank = np.full(rows.size, 3)
        else:
            rank = np.where(primary[rows] == ci, 0, 2)
        d_visit.append(rows)
        d_code.append(pick)
        d_rank.append(rank)
        for code, p in c["dx_extra"]:
            sel = rows[rng.random(rows.size) < p]
            d_visit.append(sel)
            d_code.append(np.full(sel.size, ix.dx_i[code]))
            d_rank.append(np.where(primary[sel] == ci, 1, 3))
    rare = [ix.dx_i[c] for c in K.RARE_DIAGNOSES]
    rows, codes, ranks = _rare_codes(rng, vis.V, rare, INCIDENTAL_DX_RATE, 4)
    d_visit.append(rows)
    d_code.append(codes)
    d_rank.append(ranks)
    return _finalise_codes(rng, d_visit, d_code, d_rank, len(ix.dx_codes))


def _procedures(rng, ix: _Index, vis: _Visits):
    """PROCEDURES_ICD as (visit, code, SEQ_NUM): condition, base, severity and rare procedures."""
    V, primary = vis.V, vis.primary
    p_visit, p_code, p_rank = [], [], []
    for ci, c in enumerate(ix.conds):
        rows = np.flatnonzero(vis.active[:, ci])
        for code, p in c.get("px", {}).items():
            sel = rows[rng.random(rows.size) < p]
            p_visit.append(sel)
            p_code.append(np.full(sel.size, ix.px_i[code]))
            p_rank.append(np.where(primary[sel] == ci, 0, 1))
    for code, p in K.BASE_PROCEDURES.items():
        sel = np.flatnonzero(rng.random(V) < p)
        p_visit.append(sel)
        p_code.append(np.full(sel.size, ix.px_i[code]))
        p_rank.append(np.full(sel.size, 2))
    for code, ps in K.SEVERITY_PROCEDURES.items():
        sel = np.flatnonzero(rng.random(V) < np.asarray(ps)[vis.severity])
        p_visit.append(sel)
        p_code.append(np.full(sel.size, ix.px_i[code]))
        p_rank.append(np.full(sel.size, 1))
    rare = [ix.px_i[c] for c in K.RARE_PROCEDURES]
    rows, codes, ranks = _rare_codes(rng, V, rare, RARE_PX_RATE, 3)
    p_visit.append(rows)
    p_code.append(codes)
    p_rank.append(ranks)
    return _finalise_codes(rng, p_visit, p_code, p_rank, len(ix.px_codes))


# ---- medication classes per visit -------------------------------------------------------------
def _medication_classes(
    rng, ix: _Index, pts: _Patients, vis: _Visits, cfg: SyntheticConfig, cat: pd.DataFrame
) -> _Medications:
    """The ATC3 classes given at each admission, and the true probability of each (the oracle).

    Each class is drawn once per admission with probability ``p_raw``: the noisy-OR of its sources
    (chronic regimens, acute conditions, rules, the routine), times the share kept by the
    contraindications of the admission's conditions and age. Then a class is withheld with its
    probability when an interacting driving class was drawn (DRUG_WITHHOLDING). The oracle is the
    exact marginal of all this given what the generator knows, times the probability that at
    least one of the class's PRESCRIPTIONS rows maps back to it.
    """
    p_raw = _class_probabilities(rng, ix, pts, vis, cfg)
    given = rng.random(p_raw.shape, dtype=np.float32) < p_raw
    p_final = p_raw.copy()
    if cfg.contraindications:
        for target, driver, w in K.DRUG_WITHHOLDING:
            t, d = ix.atc_i[target], ix.atc_i[driver]
            withheld = given[:, d] & (rng.random(vis.V) < w)
            given[:, t] &= ~withheld
            p_final[:, t] *= 1.0 - w * p_raw[:, d]
    no_rx = rng.random(vis.V) < 0.02  # a few admissions without any PRESCRIPTIONS row, as in MIMIC
    given[no_rx] = False
    mv, ma = np.nonzero(given)
    oracle = (p_final * _mapping_probability(ix, cat)[None, :]).astype(np.float32)
    return _Medications(mv, ma, no_rx, oracle)


def _class_probabilities(rng, ix: _Index, pts: _Patients, vis: _Visits, cfg: SyntheticConfig):
    """[V, classes] float32: each class's probability before the interacting-class withholding."""
    V, pat = vis.V, vis.pat
    keep = np.ones((V, len(ix.atc3s)), dtype=np.float32)  # prod(1 - p) over the sources
    for ci, c in enumerate(ix.conds):
        rows = np.flatnonzero(vis.active[:, ci])
        for atc, p in c["meds"].items():
            a = ix.atc_i[atc]
            if c["kind"] == "chronic":  # the patient's regimen, continued at each admission
                regimen = rng.random(pts.n) < p
                keep[rows, a] *= 1.0 - cfg.regimen_continue_p * regimen[pat[rows]]
            else:
                keep[rows, a] *= 1.0 - p
    sd = cfg.routine_patient_sd
    z = rng.normal(size=(pts.n, len(K.BASE_MEDS))) if sd > 0 else None
    decades = (vis.age_v - 65.0) / 10.0 if cfg.interactions else np.zeros(V)
    female = pts.female[pat] if cfg.interactions else np.zeros(V, dtype=bool)
    for k, (atc, p) in enumerate(K.BASE_MEDS.items()):
        lg = _logit(p) + K.ROUTINE_AGE.get(atc, 0.0) * decades
        lg = lg + K.ROUTINE_FEMALE.get(atc, 0.0) * female
        if z is not None:
            lg = lg + sd * z[pat, k]
        keep[:, ix.atc_i[atc]] *= 1.0 - _sigmoid(lg)
    for atc, ps in K.SEVERITY_MEDS.items():
        keep[:, ix.atc_i[atc]] *= 1.0 - np.asarray(ps)[vis.severity]
    if cfg.interactions:
        for rule in K.DRUG_RULES:
            keep[_rule_holds(ix, pts, vis, rule), ix.atc_i[rule["atc"]]] *= 1.0 - rule["p"]
    p_raw = 1.0 - keep
    if cfg.contraindications:
        for cond, table in K.CONDITION_CONTRAINDICATIONS.items():
            rows = vis.active[:, ix.name_to_i[cond]]
            for atc, w in table.items():
                p_raw[rows, ix.atc_i[atc]] *= 1.0 - w
        for atc, age_min, w in K.AGE_CONTRAINDICATIONS:
            p_raw[vis.age_v >= age_min, ix.atc_i[atc]] *= 1.0 - w
    return p_raw


def _rule_holds(ix: _Index, pts: _Patients, vis: _Visits, rule: Mapping[str, Any]) -> np.ndarray:
    """[V] bool: the admissions where a DRUG_RULES entry applies."""
    ok = np.ones(vis.V, dtype=bool)
    for cond in rule["all_of"]:
        ok &= vis.active[:, ix.name_to_i[cond]]
    if "age_min" in rule:
        ok &= vis.age_v >= rule["age_min"]
    if "age_max" in rule:
        ok &= vis.age_v < rule["age_max"]
    if "sex" in rule:
        ok &= pts.female[vis.pat] == (rule["sex"] == "F")
    return ok


def _drug_weights(drugs: np.ndarray) -> np.ndarray:
    """Which drug of a class is prescribed: Zipf-like over the class's drugs in DRUGS order."""
    w = 1.0 / np.arange(1, drugs.size + 1) ** 0.8
    return w / w.sum()


def _mapping_probability(ix: _Index, cat: pd.DataFrame) -> np.ndarray:
    """[classes]: P(at least one PRESCRIPTIONS row of a given class maps back to it), exactly as
    the rows are drawn (drug by _drug_weights, 1 + Poisson rows, NDC by item weight, NDC empty)."""
    drug_atc = np.array([ix.atc_i[d[0][:4]] for d in K.DRUGS])
    mapped = (cat["in_ndc_map"] & cat["in_atc_map"]).to_numpy(dtype=np.float64)
    q = (1.0 - NDC_EMPTY_P) * np.bincount(
        cat["drug"].to_numpy(), weights=cat["weight"].to_numpy() * mapped, minlength=len(K.DRUGS)
    )
    p_drug = 1.0 - (1.0 - q) * np.exp(-ROWS_PER_CLASS * q)  # E[1 - (1-q)^(1+N)], N ~ Poisson
    out = np.zeros(len(ix.atc3s))
    for a in range(len(ix.atc3s)):
        drugs = np.flatnonzero(drug_atc == a)
        out[a] = float((_drug_weights(drugs) * p_drug[drugs]).sum())
    return out


# ---- prescription rows ------------------------------------------------------------------------
def _simulate_prescriptions(rng, ix: _Index, cat: pd.DataFrame, vis: _Visits, mv, ma, no_rx):
    r_visit, r_item = _prescription_items(rng, ix, cat, vis.V, mv, ma, no_rx)
    icustay, icu_null, start, end = _prescription_dates(rng, vis, r_visit)
    return _Prescriptions(r_visit, r_item, icustay, icu_null, start, end)


def _pick_drugs(rng, ix: _Index, drug_atc: np.ndarray, ma: np.ndarray) -> np.ndarray:
    """One drug per (admission, ATC3 class), Zipf-like over the class's drugs."""
    drug_pick = np.zeros(ma.size, dtype=np.int64)
    for a in range(len(ix.atc3s)):
        sel = np.flatnonzero(ma == a)
        drugs = np.flatnonzero(drug_atc == a)
        if sel.size == 0:
            continue
        if drugs.size == 0:
            raise ValueError(f"knowledge.DRUGS has no drug for ATC3 class {ix.atc3s[a]}")
        drug_pick[sel] = drugs[_choice(rng, _drug_weights(drugs), sel.size)]
    return drug_pick


def _prescription_items(rng, ix: _Index, cat: pd.DataFrame, V: int, mv, ma, no_rx):
    """PRESCRIPTIONS rows as (visit, catalogue item), sorted by visit; NDC-0 items at the end."""
    n_items = len(cat)
    drug_of_item = cat["drug"].to_numpy()
    item_start = np.searchsorted(drug_of_item, np.arange(len(K.DRUGS)))
    item_count = np.bincount(drug_of_item, minlength=len(K.DRUGS))
    drug_atc = np.array([ix.atc_i[d[0][:4]] for d in K.DRUGS])
    drug_pick = _pick_drugs(rng, ix, drug_atc, ma)
    n_rows = 1 + rng.poisson(ROWS_PER_CLASS, mv.size)
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
    return r_visit[o], r_item[o]


def _prescription_dates(rng, vis: _Visits, r_visit: np.ndarray):
    """ICU stays and start/end dates; returns (icustay [V], icu_null [R], start [R], end [R])."""
    V, R = vis.V, r_visit.size
    icu = (vis.severity >= 2) | (rng.random(V) < 0.3)
    icustay = rng.choice(max(100_000, 2 * V), V, replace=False) + 200_000
    icu_null = ~icu[r_visit] | (rng.random(R) < 0.25)
    day_of = (vis.admit // DAY) * DAY
    los_days = np.maximum((vis.disch - day_of) // DAY, 0)
    start = day_of[r_visit] + (rng.random(R) * (los_days[r_visit] + 1)).astype(np.int64) * DAY
    end = np.minimum(
        start + rng.integers(1, 6, R) * DAY, day_of[r_visit] + (los_days[r_visit] + 1) * DAY
    )
    return icustay, icu_null, start, end


# ---- identifiers ------------------------------------------------------------------------------
def _identifiers(rng: np.random.Generator, n: int, V: int):
    """Returns (SUBJECT_ID [n], sorted; HADM_ID [V], random: not chronological)."""
    subject_id = np.sort(rng.choice(max(100_000, 2 * n), n, replace=False) + 1)
    hadm_span = max(900_000, 4 * V)
    hadm_id = rng.choice(hadm_span, V, replace=False) + 100_000
    return subject_id, hadm_id


# ---- tables -----------------------------------------------------------------------------------
def _item_columns(cat: pd.DataFrame) -> dict[str, list]:
    """PRESCRIPTIONS drug columns per catalogue item, then per NDC-0 item."""
    n_items = len(cat)
    zero_names = [nm for nm, _ in K.NDC_ZERO_ITEMS]
    return {
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


def _prescriptions_table(rng, cat: pd.DataFrame, rx: _Prescriptions, v_subject, hadm_id):
    item_cols = _item_columns(cat)
    R = rx.visit.size
    ndc_null = rng.random(R) < NDC_EMPTY_P  # NDC left empty, as happens in MIMIC
    presc = {
        "ROW_ID": pa.array(np.arange(1, R + 1)),
        "SUBJECT_ID": pa.array(v_subject[rx.visit]),
        "HADM_ID": pa.array(hadm_id[rx.visit]),
        "ICUSTAY_ID": pa.array(rx.icustay[rx.visit], mask=rx.icu_null),
        "STARTDATE": _timestamps(rx.start),
        "ENDDATE": _timestamps(rx.end),
    }
    item = pa.array(rx.item.astype(np.int32))  # one index array shared by the item columns
    for col in COLUMNS["PRESCRIPTIONS"][6:]:
        ind = pa.array(rx.item.astype(np.int32), mask=ndc_null) if col == "NDC" else item
        presc[col] = pa.DictionaryArray.from_arrays(ind, _labels(item_cols[col]))
    return pa.table({c: presc[c] for c in COLUMNS["PRESCRIPTIONS"]})


def _admissions_table(
    rng, ix: _Index, vis: _Visits, adm_type, profile, outcomes, v_subject, hadm_id
):
    V, admit, disch = vis.V, vis.admit, vis.disch
    ed = adm_type == 1
    edreg = admit - rng.integers(60, 10 * 60, V) * 60
    dx_text = [c["name"].upper() for c in ix.conds]
    dx_text = [
        t + ("\\" + "SURGERY /SDA" if c.get("elective", 0) > 0.5 else "")
        for t, c in zip(dx_text, ix.conds, strict=True)
    ]
    hosp_death = outcomes.hosp_death
    return pa.table(
        {
            "ROW_ID": pa.array(np.arange(1, V + 1)),
            "SUBJECT_ID": pa.array(v_subject),
            "HADM_ID": pa.array(hadm_id),
            "ADMITTIME": _dates(admit),
            "DISCHTIME": _dates(disch),
            "DEATHTIME": _dates(disch, ~hosp_death),
            "ADMISSION_TYPE": profile["ADMISSION_TYPE"],
            "ADMISSION_LOCATION": profile["ADMISSION_LOCATION"],
            "DISCHARGE_LOCATION": outcomes.discharge,
            "INSURANCE": profile["INSURANCE"],
            "LANGUAGE": profile["LANGUAGE"],
            "RELIGION": profile["RELIGION"],
            "MARITAL_STATUS": profile["MARITAL_STATUS"],
            "ETHNICITY": profile["ETHNICITY"],
            "EDREGTIME": _dates(edreg, ~ed),
            "EDOUTTIME": _dates(admit + 30 * 60, ~ed),
            "DIAGNOSIS": _take(dx_text, vis.primary),
            "HOSPITAL_EXPIRE_FLAG": pa.array(hosp_death.astype(np.int64)),
            "HAS_CHARTEVENTS_DATA": pa.array((rng.random(V) < 0.97).astype(np.int64)),
        }
    )


def _patients_table(rng, pts: _Patients, vis: _Visits, outcomes: _Outcomes, subject_id):
    # DOB from the age at the first admission; >89 shifted to ~300 years as in MIMIC
    n, age0, t0 = pts.n, pts.age0, vis.t0
    dob_age = np.where(age0 >= 89.0, 300.0 + (age0 - 89.0), age0)
    dob = t0 - (dob_age * YEAR).astype(np.int64)
    dob = dob - dob % DAY
    last_disch = vis.disch[outcomes.last]
    hosp_dead_p = outcomes.hosp_death[outcomes.last]
    dod = np.where(
        hosp_dead_p,
        last_disch,
        last_disch + ((rng.exponential(700.0, n) + 1) * DAY).astype(np.int64),
    )
    dod = dod - dod % DAY
    dead = hosp_dead_p | outcomes.died_later
    ssn_known = dead & (~hosp_dead_p | (rng.random(n) < 0.6))
    return pa.table(
        {
            "ROW_ID": pa.array(np.arange(1, n + 1)),
            "SUBJECT_ID": pa.array(subject_id),
            "GENDER": _take(["M", "F"], pts.female.astype(np.int64)),
            "DOB": _dates(dob),
            "DOD": _dates(dod, ~dead),
            "DOD_HOSP": _dates(dod, ~hosp_dead_p),
            "DOD_SSN": _dates(dod, ~ssn_known),
            "EXPIRE_FLAG": pa.array(dead.astype(np.int64)),
        }
    )


def _code_table(fin, codes: list[str], v_subject, hadm_id) -> pa.Table:
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


def _icd_dictionary(titles: dict[str, tuple[str, str]]) -> pa.Table:
    codes = list(titles)
    return pa.table(
        {
            "ROW_ID": pa.array(np.arange(1, len(codes) + 1)),
            "ICD9_CODE": _labels(codes),
            "SHORT_TITLE": _labels([titles[c][0] for c in codes]),
            "LONG_TITLE": _labels([titles[c][1] for c in codes]),
        }
    )


def _oracle_table(oracle: np.ndarray, atc3s: list[str], hadm_id: np.ndarray) -> pa.Table:
    """HADM_ID + one float32 column per ATC3 class: the admission's true label probabilities."""
    columns = {"HADM_ID": pa.array(hadm_id.astype(np.int64))}
    columns.update({atc: pa.array(oracle[:, a]) for a, atc in enumerate(atc3s)})
    return pa.table(columns)


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
def generate_cohort(
    n_patients: int, seed: int, params: SyntheticConfig | Mapping[str, Any] | None = None
) -> dict[str, pd.DataFrame]:
    """Simulate `n_patients` patients; return the raw MIMIC-III tables and the aux tables.

    Keys: PATIENTS, ADMISSIONS, DIAGNOSES_ICD, PROCEDURES_ICD, PRESCRIPTIONS, D_ICD_DIAGNOSES,
    D_ICD_PROCEDURES (UPPER-case MIMIC-III v1.4 columns; codes, NDCs and dates are strings; ids
    are Int64 with nulls where MIMIC has them), ORACLE (HADM_ID + the true probability of each
    ATC3 class) and the aux tables NDC2RXNORM (NDC, RXCUI), RXCUI2ATC4 (YEAR, MONTH, NDC, RXCUI,
    ATC4), WHO_ATC (atc_code, atc_name, ddd, uom, adm_r, note), DDI_PAIRS (atc3_a, atc3_b).
    ``params``: the mechanism switches of :class:`SyntheticConfig` (its n_patients and seed are
    ignored in favour of the arguments).
    """
    tables = _simulate(n_patients, seed, _mechanism(params))
    return {name: _to_pandas(t) for name, t in tables.items()}


def _mechanism(params: SyntheticConfig | Mapping[str, Any] | None) -> SyntheticConfig:
    if params is None or isinstance(params, SyntheticConfig):
        return params or SyntheticConfig()
    return synthetic_config(params)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return _as_text(table).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def write_cohort(
    raw_dir,
    aux_dir,
    n_patients: int,
    seed: int,
    params: SyntheticConfig | Mapping[str, Any] | None = None,
) -> dict:
    """Generate the cohort and write it as real MIMIC-III + aux files; return a manifest.

    Besides the MIMIC tables, raw_dir gets ``SYNTHETIC_ORACLE.parquet`` (what the generator knows:
    the true probability of each ATC3 class at each admission) and ``SYNTHETIC_MANIFEST.json``.
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
    cfg = _mechanism(params)
    tables = _simulate(n_patients, seed, cfg)
    raw_dir.mkdir(parents=True, exist_ok=True)
    aux_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    opts = pacsv.WriteOptions(quoting_style="needed")
    row_counts = {k: int(t.num_rows) for k, t in tables.items()}
    for name in RAW_TABLES:
        path = raw_dir / f"{name}.csv"
        _write_csv(tables.pop(name), path, opts)  # each table freed once written
        paths[name] = str(path)
    pq.write_table(tables["ORACLE"], raw_dir / ORACLE_NAME)
    paths["ORACLE"] = str(raw_dir / ORACLE_NAME)
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
        "generator": "leader_kedro.synthetic.generator",
        "version": GENERATOR_VERSION,
        "n_patients": int(n_patients),
        "seed": int(seed),
        "mechanism": {k: v for k, v in as_dict(cfg).items() if k not in ("n_patients", "seed")},
        "paths": paths,
        "row_counts": row_counts,
    }
    (raw_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_oracle(path: str | Path, hadm_ids, medications) -> np.ndarray:
    """[len(hadm_ids), len(medications)] float64: the oracle probabilities of those admissions and
    classes, from ``SYNTHETIC_ORACLE.parquet``. A class the cohort never gives is 0."""
    names = set(pq.read_schema(path).names)
    present = [m for m in dict.fromkeys(medications) if m in names]
    table = pq.read_table(path, columns=["HADM_ID", *present])  # Arrow: no pandas copy
    ids = pd.Index(np.asarray(hadm_ids, dtype=np.int64))
    pos = pd.Index(table.column("HADM_ID").to_numpy()).get_indexer(ids)
    missing = ids[pos < 0]
    if len(missing):
        raise ValueError(
            f"{path}: no oracle row for {len(missing)} admission(s), e.g. {list(missing[:3])}; "
            "the samples do not come from this synthetic cohort (re-run `kedro run --pipeline=ingest`)"
        )
    out = np.zeros((len(ids), len(medications)), dtype=np.float64)
    for j, med in enumerate(medications):
        if med in names:
            out[:, j] = table.column(med).to_numpy()[pos]
    return out


# --------------------------------------------------------------------------------------------
# benchmark CLI
# --------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m leader_kedro.synthetic.generator",
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
