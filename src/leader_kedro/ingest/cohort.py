"""Raw MIMIC tables -> visits, vocabularies, code names, DDI adjacency (docs/contracts.md).

Everything is vectorised with pandas (merge / groupby / isin); no per-row Python loops over the
big tables. Every dropped row, visit and patient is counted by reason in the returned stats.
Samples and the split live in ``samples.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import pandas as pd

from leader_kedro.config import build_config
from leader_kedro.contracts import (
    CODE_TYPES,
    PROFILE_FIELDS,
    SPECIAL_TOKENS,
    IngestInputError,
    ParameterError,
)
from leader_kedro.ingest.meter import StageMeter
from leader_kedro.ingest.readers import clean_categorical, normalise_ndc


@dataclass(frozen=True)
class AuxFilesConfig:
    """Public file names of the auxiliary inputs, found under ``aux_dir`` (null = not used)."""

    ndc2rxnorm: str | None = "ndc2rxnorm_mapping.txt"
    rxcui2atc4: str | None = "RXCUI2atc4.csv"
    ndc2atc3: str | None = None
    atc_names: str | None = "WHO ATC-DDD 2021-12-03.csv"
    ddi_pairs_atc3: str | None = "ddi_pairs_atc3.csv"
    twosides: str | None = "drug-DDI.csv"
    drug_atc: str | None = "drug-atc.csv"


@dataclass(frozen=True)
class SplitConfig:
    method: str = "random"  # random (seeded shuffle) | sequential (subject-id order)
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int | None = None  # null = the global seed


@dataclass(frozen=True)
class IngestConfig:
    """``params:ingest`` (conf/base/parameters_ingest.yml; defaults = LEADER / SafeDrug values)."""

    aux_files: AuxFilesConfig = field(default_factory=AuxFilesConfig)
    mapping_routes: tuple[str, ...] = ("rxnorm", "direct")
    atc4_choice: str = "first_sorted"
    drop_ndc_zero: bool = True
    ddi_source: str = "atc3_pairs"
    ddi_twosides_topk: int = 40
    top_k_medications: int | None = 300
    top_k_diagnoses: int | None = 2000
    top_k_procedures: int | None = None
    topk_count: str = "rows"  # rows (LEADER/SafeDrug) | visits
    visit_order: str = "admittime"  # admittime | hadm_id (published pipelines)
    required_code_types: tuple[str, ...] = CODE_TYPES
    min_visits: int = 1
    patient_fraction: float = 1.0
    icd_title: str = "long"  # long | short (LEADER MIMIC-III; MIMIC-IV has only long titles)
    age_cap: float = 90.0
    age_bins: tuple[float, ...] = (18, 30, 40, 50, 60, 70, 80, 90)
    smiles_filter: bool = False
    sample_protocol: str = "last_visit"
    eval_sample_protocol: str = "last_visit"
    split: SplitConfig = field(default_factory=SplitConfig)
    seed: int = 42

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, params, seed: int | None = None) -> IngestConfig:
        """The config from the ``ingest`` tree (``seed``: the global seed, unless the tree sets one).

        A wrong key or type is an :class:`IngestInputError` naming ``ingest.<key>``.
        """
        if isinstance(params, cls):
            return params
        params = dict(params or {})
        if seed is not None and "seed" not in params:
            params["seed"] = int(seed)
        try:
            return build_config(cls, params, "ingest")
        except ParameterError as exc:
            if isinstance(exc, IngestInputError):
                raise
            raise IngestInputError(f"Invalid parameter: {exc}") from None

    @property
    def split_seed(self) -> int:
        return self.split.seed if self.split.seed is not None else self.seed

    def validate(self) -> None:
        def bad(name, value, expected):
            raise IngestInputError(
                f"Invalid parameter `ingest.{name}`: {value!r}; expected {expected}."
            )

        if self.visit_order not in ("admittime", "hadm_id"):
            bad("visit_order", self.visit_order, "admittime or hadm_id")
        if self.topk_count not in ("rows", "visits"):
            bad("topk_count", self.topk_count, "rows or visits")
        for k in ("top_k_medications", "top_k_diagnoses", "top_k_procedures"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v < 1):
                bad(k, v, "a positive integer or null (no limit)")
        if not isinstance(self.min_visits, int) or self.min_visits < 1:
            bad("min_visits", self.min_visits, "an integer >= 1 (1 keeps single-visit patients)")
        unknown = set(self.required_code_types) - set(CODE_TYPES)
        if unknown or "medications" not in self.required_code_types:
            bad(
                "required_code_types",
                self.required_code_types,
                f"a subset of {list(CODE_TYPES)} that contains 'medications' (the labels)",
            )
        if not self.mapping_routes or set(self.mapping_routes) - {"rxnorm", "direct"}:
            bad(
                "mapping_routes",
                self.mapping_routes,
                "a non-empty list of 'rxnorm' and/or 'direct'",
            )
        if not 0 < float(self.patient_fraction) <= 1:
            bad("patient_fraction", self.patient_fraction, "a number in (0, 1]")
        if self.icd_title not in ("short", "long"):
            bad("icd_title", self.icd_title, "short or long")
        if list(self.age_bins) != sorted(self.age_bins):
            bad("age_bins", self.age_bins, "increasing bin edges")
        if self.smiles_filter:
            bad(
                "smiles_filter",
                True,
                "false: the SafeDrug SMILES filter needs DrugBank's drugbank_drugs_info.csv, which is not available",
            )


# --------------------------------------------------------------------------------------------
# Medications: NDC -> ATC3
# --------------------------------------------------------------------------------------------
def ndc_to_atc3_table(
    ndcs: pd.Series,
    routes: Sequence[str],
    ndc2rxnorm: pd.DataFrame | None,
    rxcui2atc4: pd.DataFrame | None,
    ndc2atc3: pd.DataFrame | None,
) -> pd.DataFrame:
    """Map distinct NDCs to ATC3 through the routes in priority order; columns ndc, atc3, route."""
    todo = pd.DataFrame({"ndc": pd.Series(ndcs.dropna().unique(), dtype="string")})
    done = []
    for route in routes:
        if route == "rxnorm" and ndc2rxnorm is not None and rxcui2atc4 is not None:
            m = todo.merge(ndc2rxnorm, on="ndc").merge(rxcui2atc4[["rxcui", "atc4"]], on="rxcui")
            m = m.assign(atc3=m["atc4"].str[:4])[["ndc", "atc3"]]
        elif route == "direct" and ndc2atc3 is not None:
            m = todo.merge(ndc2atc3[["ndc", "atc3"]], on="ndc")
        else:
            continue
        m = m.drop_duplicates("ndc").assign(route=route)
        done.append(m)
        todo = todo[~todo["ndc"].isin(m["ndc"])]
    if not done:
        return pd.DataFrame(
            {
                "ndc": pd.Series(dtype="string"),
                "atc3": pd.Series(dtype="string"),
                "route": pd.Series(dtype="string"),
            }
        )
    return pd.concat(done, ignore_index=True)


def map_medications(
    prescriptions: pd.DataFrame, aux: dict, p: IngestConfig, source_file: str = "PRESCRIPTIONS"
) -> tuple[pd.DataFrame, dict, dict]:
    """Prescription rows -> (subject_id, hadm_id, code = ATC3) rows; returns (rows, row drops,
    mapping stats).

    The NDC column is a categorical (readers.read_table): the cleaning and the mapping run on its
    distinct values, and the rows are only indexed, so that 17 million rows cost one pass.
    """
    drops: dict[str, int] = {}
    bad_id = (prescriptions["hadm_id"].isna() | prescriptions["subject_id"].isna()).to_numpy()
    drops["missing_hadm_or_subject_id"] = int(bad_id.sum())
    ndc = prescriptions["ndc"]
    if not isinstance(ndc.dtype, pd.CategoricalDtype):
        ndc = clean_categorical(ndc, normalise_ndc)
    cats = pd.Series(np.asarray(ndc.cat.categories, dtype=object), dtype=object)
    codes = ndc.cat.codes.to_numpy()
    zero = cats.str.strip("0").eq("").to_numpy(dtype=bool) if p.drop_ndc_zero else None
    # one extra slot at the end: code -1 (missing NDC) indexes it
    empty = np.append(zero if zero is not None else np.zeros(len(cats), dtype=bool), True)
    missing = ~bad_id & empty[codes]
    drops["ndc_missing_or_zero"] = int(missing.sum())
    keep = ~bad_id & ~missing
    used = np.bincount(codes[keep], minlength=len(cats)) > 0
    n_ndc = int(used.sum())
    table = ndc_to_atc3_table(
        pd.Series(cats[used].to_numpy(), dtype="string"),
        p.mapping_routes,
        aux.get("ndc2rxnorm"),
        aux.get("rxcui2atc4"),
        aux.get("ndc2atc3"),
    )
    atc3 = np.array(sorted(table["atc3"].unique()), dtype=object)
    where = pd.Index(cats).get_indexer(table["ndc"].astype(object))
    atc_of = np.full(len(cats) + 1, -1, dtype=np.int32)
    atc_of[where] = pd.Index(atc3).get_indexer(table["atc3"].astype(object))
    route_of = np.full(len(cats) + 1, -1, dtype=np.int8)
    routes = list(p.mapping_routes)
    route_of[where] = [routes.index(r) for r in table["route"]]
    row_atc = np.where(keep, atc_of[codes], -1)
    mapped = row_atc >= 0
    unmapped = keep & ~mapped
    drops["ndc_unmapped"] = int(unmapped.sum())
    n_rows, n_mapped = int(keep.sum()), int(mapped.sum())
    rows_by_route = np.bincount(route_of[codes][mapped], minlength=len(routes))
    stats = {
        "prescription_rows_with_ndc": n_rows,
        "prescription_rows_mapped": n_mapped,
        "row_coverage": _ratio(n_mapped, n_rows),
        "distinct_ndc": n_ndc,
        "distinct_ndc_mapped": int(len(table)),
        "ndc_coverage": _ratio(len(table), n_ndc),
        "by_route": {
            route: {
                "ndc": int((table["route"] == route).sum()),
                "rows": int(rows_by_route[i]),
            }
            for i, route in enumerate(routes)
        },
    }
    if n_mapped == 0:
        raise IngestInputError(
            f"No NDC mapped: none of the {n_ndc} distinct NDCs in {source_file} maps to an ATC code through "
            f"the routes {p.mapping_routes} (ingest.mapping_routes, files ingest.aux_files.ndc2rxnorm / "
            "rxcui2atc4 / ndc2atc3); expected 11-digit NDC strings present in the mapping files."
        )
    meds = pd.DataFrame(
        {
            "subject_id": _ids(prescriptions["subject_id"])[mapped],
            "hadm_id": _ids(prescriptions["hadm_id"])[mapped],
            "code": pd.Categorical.from_codes(row_atc[mapped], categories=atc3),
        }
    )
    return meds, drops, stats


def _ids(s: pd.Series) -> np.ndarray:
    """An id column as int64 (missing ids = -1; callers drop those rows first)."""
    return s.to_numpy(dtype=np.int64, na_value=-1)


def _ratio(a, b) -> float:
    return round(float(a) / float(b), 4) if b else 0.0


def top_k_codes(rows: pd.DataFrame, k: int | None, count: str) -> tuple[pd.Index, pd.DataFrame]:
    """The k most frequent codes (ties broken by code) and the rows restricted to them."""
    if count == "visits":
        freq = rows.drop_duplicates(["hadm_id", "code"])["code"].value_counts()
    else:
        freq = rows["code"].value_counts()
    freq = freq[freq > 0]  # a categorical counts its unused categories too
    freq.index = pd.Index(np.asarray(freq.index, dtype=object), dtype=object)
    freq = (
        freq.rename_axis("code")
        .reset_index(name="n")
        .sort_values(["n", "code"], ascending=[False, True], kind="stable")
    )
    keep = pd.Index(freq["code"] if k is None else freq["code"].iloc[:k], dtype=object)
    return keep, rows[rows["code"].isin(keep).to_numpy()]


# --------------------------------------------------------------------------------------------
# Visits
# --------------------------------------------------------------------------------------------
# ICD-9-CM as MIMIC-III writes it (no dot): diagnoses 3-5 digits, V + 2-4 digits, E-codes
# E000-E030 / E800-E999 (+1 digit); procedures 2-4 digits. 'I10' or 'E119' is ICD-10.
ICD9_PATTERNS = {
    "DIAGNOSES_ICD": r"(\d{3,5}|V\d{2,4}|E(0[0-3]\d|[89]\d\d)\d?)",
    "PROCEDURES_ICD": r"\d{2,4}",
}


def _code_rows(df: pd.DataFrame, drops: dict, name: str, icd9: bool = False) -> pd.DataFrame:
    """Code rows with both ids and a code; exact repeats of a (hadm_id, seq_num, code) row and,
    for ``icd9`` sources (MIMIC-III, synthetic), codes that are not ICD-9-CM are dropped and
    counted. Ids become int64."""
    bad = (df["hadm_id"].isna() | df["subject_id"].isna()).to_numpy()
    drops[f"{name}:missing_hadm_or_subject_id"] = int(bad.sum())
    code = df["code"]
    if not isinstance(code.dtype, pd.CategoricalDtype):
        code = clean_categorical(code)
    codes = code.cat.codes.to_numpy()
    miss = ~bad & (codes < 0)
    drops[f"{name}:code_missing"] = int(miss.sum())
    keep = ~bad & ~miss
    if icd9 and name in ICD9_PATTERNS:
        cats = pd.Series(np.asarray(code.cat.categories, dtype=object), dtype=object)
        ok = np.append(cats.str.fullmatch(ICD9_PATTERNS[name]).to_numpy(dtype=bool), True)
        not_icd9 = keep & ~ok[codes]
        drops[f"{name}:code_not_icd9"] = int(not_icd9.sum())
        keep &= ~not_icd9
    out = pd.DataFrame(
        {
            "subject_id": _ids(df["subject_id"])[keep],
            "hadm_id": _ids(df["hadm_id"])[keep],
            "seq_num": df["seq_num"].to_numpy(dtype=np.float64)[keep],
            "code": code[keep].reset_index(drop=True),
        }
    )
    dup = out.duplicated(["hadm_id", "seq_num", "code"]).to_numpy()
    drops[f"{name}:duplicate_rows"] = int(dup.sum())
    return out[~dup].reset_index(drop=True) if dup.any() else out


def _lists(rows: pd.DataFrame) -> pd.Series:
    """hadm_id -> unique list of codes (vectorised: factorise, sort ints, split once).

    With a ``seq_num`` column (diagnoses, procedures) the codes keep their SEQ_NUM order, rows
    without a SEQ_NUM last and ties in file order; a code listed twice keeps its first position.
    Without one (medications) the codes are sorted.
    """
    if rows.empty:
        return pd.Series(dtype=object)
    code = rows["code"]
    if isinstance(code.dtype, pd.CategoricalDtype) and code.cat.categories.is_monotonic_increasing:
        ids, uniques = code.cat.codes.to_numpy(), code.cat.categories
    else:
        ids, uniques = pd.factorize(rows["code"], sort=True)
    h = rows["hadm_id"].to_numpy(dtype=np.int64)
    c = np.asarray(ids, dtype=np.int64)
    n_codes = len(uniques) + 1
    if "seq_num" in rows.columns:
        order = _visit_seq_order(h, rows["seq_num"].to_numpy(dtype=np.float64))
        h, c = h[order], c[order]
        first = _first_of_each(h * n_codes + c)  # first position of each (visit, code)
        h, c = h[first], c[first]
    else:  # sorted (visit, code) pairs, each once: one sort of one int64 key
        if h.size and (h.min() < 0 or h.max() >= np.iinfo(np.int64).max // n_codes):
            order = np.lexsort((c, h))
            h, c = h[order], c[order]
            keep = np.r_[True, (h[1:] != h[:-1]) | (c[1:] != c[:-1])]
            h, c = h[keep], c[keep]
        else:
            key = np.sort(h * n_codes + c)
            key = key[np.r_[True, key[1:] != key[:-1]]]
            h, c = key // n_codes, key % n_codes
    flat = np.asarray(uniques, dtype=object)[c].tolist()  # one str object per distinct code
    starts = np.r_[0, np.flatnonzero(h[1:] != h[:-1]) + 1]
    ends = np.r_[starts[1:], len(flat)]
    lists = [flat[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    # plain object column of Python lists (pandas 3 would otherwise infer an Arrow list dtype,
    # whose parquet metadata pandas cannot read back)
    return pd.Series(lists, index=pd.Index(h[starts], name="hadm_id"), dtype=object)


def _visit_seq_order(h: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Row order by visit, then SEQ_NUM (missing last), then file order.

    Integer SEQ_NUMs below 2**20 and ids below 2**42 (MIMIC's) make one int64 key and one stable
    sort; anything else takes the three-key lexsort.
    """
    finite = np.isfinite(seq)
    whole = finite & (seq >= 0) & (seq < 2**20) & (np.mod(seq, 1) == 0)
    if h.size and (whole | ~finite).all() and h.min() >= 0 and h.max() < 2**42:
        key = (h << 21) + np.where(finite, seq, 2**20).astype(np.int64)
        return np.argsort(key, kind="stable")
    return np.lexsort((np.arange(len(h)), np.where(finite, seq, np.inf), h))


def _first_of_each(key: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value of ``key``, in its current order."""
    first = np.zeros(len(key), dtype=bool)
    first[np.unique(key, return_index=True)[1]] = True  # the index of each value's first row
    return first


def admission_age(
    adm: pd.DataFrame, patients: pd.DataFrame, cap: float
) -> tuple[pd.Series, dict[str, int]]:
    """Age in years at admission, capped (MIMIC shifts ages > 89 to ~300 years).

    Returns (age, counts): ``n_capped``, and ``n_before_birth``, the admissions dated before the
    patient's birth (MIMIC-IV: before anchor_year - anchor_age), whose age is unknown.
    """
    pat = patients.drop_duplicates("subject_id").set_index("subject_id")
    if "dob" in pat.columns:
        dob = adm["subject_id"].map(pat["dob"]).astype("datetime64[s]")
        admit = adm["admittime"].astype("datetime64[s]")
        age = ((admit - dob) / pd.Timedelta(days=365.25)).astype("float64")
    else:
        anchor_age = adm["subject_id"].map(pat["anchor_age"])
        anchor_year = adm["subject_id"].map(pat["anchor_year"])
        age = (anchor_age + (adm["admittime"].dt.year - anchor_year)).astype("float64")
    before_birth = age < 0
    age = age.where(~before_birth)
    capped = age > cap
    counts = {"n_capped": int(capped.sum()), "n_before_birth": int(before_birth.sum())}
    return age.clip(upper=cap).astype("float64"), counts


def build_visits(
    tables: dict[str, pd.DataFrame],
    aux: dict,
    p: IngestConfig,
    source: str = "mimic3",
    meter: StageMeter | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Standard raw tables (readers.read_raw_tables) + aux mappings -> the ``visits`` table and
    stats. The code tables (diagnoses, procedures, prescriptions) are removed from ``tables``
    once they are turned into code rows, so that the big tables are never held twice.
    ``source``: MIMIC-III and the synthetic cohort hold ICD-9-CM codes only (others are dropped
    and counted); MIMIC-IV codes carry their version. ``meter`` times the stages ``map`` (code
    rows, NDC -> ATC3) and ``visits`` (the rest)."""
    meter = meter or StageMeter(log=False)
    row_drops: dict[str, int] = {}
    with meter.stage("map"):
        adm = _admission_rows(tables["admissions"], row_drops, p.visit_order)
        patients = _patient_rows(tables["patients"], row_drops)
        rows, rx_admissions, mapping = _code_type_rows(
            tables, aux, p, row_drops, source != "mimic4"
        )
    with meter.stage("visits"):
        visits, stats = _visits_from_rows(tables, adm, patients, rows, rx_admissions, p, row_drops)
    stats["mapping"] = mapping
    return visits, stats


def _visits_from_rows(
    tables: dict[str, pd.DataFrame],
    adm: pd.DataFrame,
    patients: pd.DataFrame,
    rows: dict[str, pd.DataFrame],
    rx_admissions: np.ndarray,
    p: IngestConfig,
    row_drops: dict[str, int],
) -> tuple[pd.DataFrame, dict]:
    """The part of ``build_visits`` after the mapping (top-k, joins, order, filters, profile)."""
    recorded, mapped_meds = _recorded_admissions(rows, rx_admissions)
    lists, vocab_sizes = _top_k_lists(rows, adm, p, row_drops)
    rows.clear()  # the caller's code rows: not needed past the lists

    reason = _drop_reasons(adm["hadm_id"], lists, recorded, mapped_meds, p.required_code_types)
    visit_drops = {str(k): int(v) for k, v in reason.value_counts().items()}
    adm = adm[reason.isna().to_numpy()]
    visits = _join_code_lists(adm, lists)
    del lists

    patient_drops: dict[str, int] = {}
    n_before = visits["subject_id"].nunique()
    visits = _sample_patients(visits, p, patient_drops, visit_drops)
    visits = _order_visits(visits, p.visit_order)
    visits = _drop_below_min_visits(visits, p.min_visits, patient_drops, visit_drops)
    patients_lost = int(
        tables["admissions"]["subject_id"].nunique() - visits["subject_id"].nunique()
    )
    if visits.empty:
        raise IngestInputError(
            "Cohort emptied by the filters: no visit is left (visits dropped by reason: "
            f"{visit_drops}; patients dropped: {patient_drops}). Check ingest.required_code_types, "
            "ingest.min_visits, the top-k parameters and the mapping files."
        )

    visits, age_counts = _add_profile(visits, patients, p.age_cap)
    stats = {
        "rows_dropped": row_drops,
        "visits_dropped": visit_drops,
        "patients_dropped": {**patient_drops, "all_visits_dropped_total": patients_lost},
        "top_k_vocab_sizes": vocab_sizes,
        "age": {
            "cap": p.age_cap,
            **age_counts,
            "n_unknown": int(visits["age"].isna().sum()),
            "note": f"MIMIC shifts ages above 89 to ~300 years; ages are capped at {p.age_cap}; "
            "an admission dated before birth has an unknown age",
        },
        "visits_before_patient_filters": int(len(adm)),
        "patients_before_patient_filters": int(n_before),
    }
    return visits, stats


def _admission_rows(adm: pd.DataFrame, row_drops: dict, visit_order: str) -> pd.DataFrame:
    """ADMISSIONS without rows missing an id or repeating a hadm_id (and, when visits are ordered
    by admission time, without an admission time); ids as int64."""
    bad = adm["hadm_id"].isna() | adm["subject_id"].isna()
    row_drops["ADMISSIONS:missing_hadm_or_subject_id"] = int(bad.sum())
    adm = adm[~bad]
    dup = adm["hadm_id"].duplicated()
    row_drops["ADMISSIONS:duplicate_hadm_id"] = int(dup.sum())
    adm = adm[~dup]
    if visit_order == "admittime":
        no_time = adm["admittime"].isna()
        row_drops["ADMISSIONS:missing_admittime"] = int(no_time.sum())
        adm = adm[~no_time]
    adm = adm.copy()
    adm["subject_id"], adm["hadm_id"] = (
        adm["subject_id"].astype("int64"),
        adm["hadm_id"].astype("int64"),
    )
    return adm


def _patient_rows(patients: pd.DataFrame, row_drops: dict) -> pd.DataFrame:
    """PATIENTS without rows missing the subject_id; a repeated subject_id keeps its first row."""
    bad = patients["subject_id"].isna()
    row_drops["PATIENTS:missing_subject_id"] = int(bad.sum())
    patients = patients[~bad]
    dup = patients["subject_id"].duplicated()
    row_drops["PATIENTS:duplicate_subject_id"] = int(dup.sum())
    return patients[~dup]


def _code_type_rows(
    tables: dict[str, pd.DataFrame], aux: dict, p: IngestConfig, row_drops: dict, icd9: bool
) -> tuple[dict[str, pd.DataFrame], np.ndarray, dict]:
    """(subject_id, hadm_id, code) rows per code type (medications mapped to ATC3), the hadm_ids
    with any prescription row, and the mapping stats. Takes the code tables out of ``tables``."""
    dx = _code_rows(tables.pop("diagnoses"), row_drops, "DIAGNOSES_ICD", icd9)
    px = _code_rows(tables.pop("procedures"), row_drops, "PROCEDURES_ICD", icd9)
    rx = tables.pop("prescriptions")
    recorded_meds = pd.unique(rx["hadm_id"].dropna().to_numpy(dtype=np.int64))
    meds, med_drops, mapping = map_medications(rx, aux, p)
    del rx
    row_drops.update({f"PRESCRIPTIONS:{k}": v for k, v in med_drops.items()})
    return {"diagnoses": dx, "procedures": px, "medications": meds}, recorded_meds, mapping


def _recorded_admissions(
    rows: dict[str, pd.DataFrame], recorded_meds: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """hadm_ids with any row of each code type (before top-k), and those with a mapped medication."""
    recorded = {
        "diagnoses": pd.unique(rows["diagnoses"]["hadm_id"].to_numpy()),
        "procedures": pd.unique(rows["procedures"]["hadm_id"].to_numpy()),
        "medications": recorded_meds,
    }
    return recorded, pd.unique(rows["medications"]["hadm_id"].to_numpy())


def _top_k_lists(
    rows: dict[str, pd.DataFrame], adm: pd.DataFrame, p: IngestConfig, row_drops: dict
) -> tuple[dict[str, pd.Series], dict[str, int]]:
    """Top-k codes per type, rows of known admissions of the same patient only
    -> (hadm_id -> code list, vocab sizes)."""
    top_k = {
        "diagnoses": p.top_k_diagnoses,
        "procedures": p.top_k_procedures,
        "medications": p.top_k_medications,
    }
    adm_index = pd.Index(adm["hadm_id"].to_numpy())
    adm_subject = np.append(adm["subject_id"].to_numpy(), -1)  # position -1: not admitted
    lists, vocab_sizes = {}, {}
    for name in CODE_TYPES:
        keep, kept = top_k_codes(rows[name], top_k[name], p.topk_count)
        row_drops[f"{name}:code_outside_top_k"] = int(len(rows[name]) - len(kept))
        pos = adm_index.get_indexer(kept["hadm_id"].to_numpy())
        orphan = pos < 0
        row_drops[f"{name}:hadm_id_not_in_admissions"] = int(orphan.sum())
        other = ~orphan & (adm_subject[pos] != kept["subject_id"].to_numpy())
        row_drops[f"{name}:subject_id_differs_from_admission"] = int(other.sum())
        lists[name] = _lists(kept[~orphan & ~other])
        vocab_sizes[name] = int(len(keep))
    return lists, vocab_sizes


def _drop_reasons(
    adm_ids: pd.Series,
    lists: dict[str, pd.Series],
    recorded: dict[str, np.ndarray],
    mapped_meds: np.ndarray,
    required: Sequence[str],
) -> pd.Series:
    """Why each admission is dropped (NA = kept), indexed by hadm_id.

    The first missing code type in required order decides the reason.
    """
    reason = pd.Series(pd.NA, index=adm_ids.to_numpy(), dtype="string")
    for name in required:
        idx = reason.index
        has_kept = idx.isin(lists[name].index)
        has_rec = idx.isin(recorded[name])
        if name == "medications":
            has_map = idx.isin(mapped_meds)
            why = np.where(
                ~has_rec,
                "no_medications_recorded",
                np.where(~has_map, "no_medication_mapped_to_atc3", "no_medication_in_top_k"),
            )
        else:
            why = np.where(~has_rec, f"no_{name}_recorded", f"no_{name}_in_top_k")
        reason = reason.mask(reason.isna() & ~has_kept, pd.Series(why, index=idx, dtype="string"))
    return reason


def _join_code_lists(adm: pd.DataFrame, lists: dict[str, pd.Series]) -> pd.DataFrame:
    """The admissions with one code-list column per code type ([] where it has none)."""
    visits = adm.copy()
    for name in CODE_TYPES:
        visits[name] = visits["hadm_id"].map(lists[name])
        empty = visits[name].isna()
        if empty.any():
            visits.loc[empty, name] = pd.Series(
                [[] for _ in range(int(empty.sum()))], index=visits.index[empty], dtype=object
            )
    return visits


def _sample_patients(
    visits: pd.DataFrame, p: IngestConfig, patient_drops: dict, visit_drops: dict
) -> pd.DataFrame:
    """Keep a seeded random ``patient_fraction`` of the patients (everyone at 1.0)."""
    if p.patient_fraction < 1:
        subjects = np.sort(visits["subject_id"].unique())
        rng = np.random.default_rng(p.seed)
        chosen = rng.choice(
            subjects, size=max(1, int(round(p.patient_fraction * len(subjects)))), replace=False
        )
        out = ~visits["subject_id"].isin(chosen)
        patient_drops["not_sampled_patient_fraction"] = int(visits.loc[out, "subject_id"].nunique())
        visit_drops["not_sampled_patient_fraction"] = int(out.sum())
        visits = visits[~out]
    return visits


def _order_visits(visits: pd.DataFrame, visit_order: str) -> pd.DataFrame:
    """Sort by patient then admittime (or hadm_id) and number the visits inside each patient."""
    order = (
        ["subject_id", "admittime", "hadm_id"]
        if visit_order == "admittime"
        else ["subject_id", "hadm_id"]
    )
    visits = visits.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
    visits["visit_index"] = visits.groupby("subject_id").cumcount().astype("int64")
    return visits


def _drop_below_min_visits(
    visits: pd.DataFrame, min_visits: int, patient_drops: dict, visit_drops: dict
) -> pd.DataFrame:
    n_visits = visits.groupby("subject_id")["hadm_id"].transform("size")
    low = n_visits < min_visits
    patient_drops["below_min_visits"] = int(visits.loc[low, "subject_id"].nunique())
    visit_drops["patient_below_min_visits"] = int(low.sum())
    return visits[~low].reset_index(drop=True)


def _add_profile(
    visits: pd.DataFrame, patients: pd.DataFrame, age_cap: float
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Gender, capped age and the profile fields ("unknown" when missing), in the contract's
    column order; returns (visits, the age counts of ``admission_age``)."""
    age, age_counts = admission_age(visits, patients, age_cap)
    pat = patients.drop_duplicates("subject_id").set_index("subject_id")
    visits["gender"] = visits["subject_id"].map(pat["gender"])
    visits["age"] = age.to_numpy()
    for col in PROFILE_FIELDS:
        visits[col] = visits[col].astype("string").fillna("unknown").astype(str)
    cols = [
        "subject_id",
        "hadm_id",
        "admittime",
        "visit_index",
        *CODE_TYPES,
        "gender",
        "age",
        *PROFILE_FIELDS[1:],
    ]
    visits = visits[cols]
    visits["admittime"] = visits["admittime"].astype("datetime64[us]")
    return visits, age_counts


# --------------------------------------------------------------------------------------------
# Vocab, names, DDI
# --------------------------------------------------------------------------------------------
def _unique_sorted(col: pd.Series) -> list[str]:
    return sorted(str(c) for c in set(chain.from_iterable(col)))


def build_vocab(visits: pd.DataFrame, age_bins: list[float]) -> dict:
    dx, px, meds = (_unique_sorted(visits[c]) for c in CODE_TYPES)
    tokens = (
        SPECIAL_TOKENS + [f"M_{m}" for m in meds] + [f"D_{d}" for d in dx] + [f"P_{c}" for c in px]
    )
    profile = {
        f: ["unknown"] + sorted({str(v) for v in pd.unique(visits[f])} - {"unknown"})
        for f in PROFILE_FIELDS
    }
    return {
        "medication": meds,
        "diagnosis": dx,
        "procedure": px,
        "tokens": tokens,
        "profile": profile,
        "age_bins": [float(b) for b in age_bins],
    }


def build_code_names(
    vocab: dict, tables: dict[str, pd.DataFrame], atc_names: dict[str, str], icd_title: str
) -> tuple[dict, dict]:
    names, missing = {}, {}
    for kind, table in (("diagnosis", "d_diagnoses"), ("procedure", "d_procedures")):
        d = tables[table]
        col = (
            "short_title"
            if icd_title == "short" and "short_title" in d.columns
            else ("long_title" if "long_title" in d.columns else "title")
        )
        d = d.dropna(subset=["code", col]).drop_duplicates("code")
        lookup = dict(zip(d["code"], d[col], strict=True))
        names[kind] = {c: lookup[c] for c in vocab[kind] if c in lookup}
        missing[kind] = int(len(vocab[kind]) - len(names[kind]))
    names["medication"] = {m: atc_names[m] for m in vocab["medication"] if m in atc_names}
    missing["medication"] = int(len(vocab["medication"]) - len(names["medication"]))
    return names, missing


def shared_name_counts(code_names: dict) -> dict[str, int]:
    """Per code kind: how many codes share their name (case and spacing ignored) with another
    code of the same kind. A prompt cannot tell such codes apart; 0 is the goal."""
    out = {}
    for kind, names in code_names.items():
        keys = pd.Series([" ".join(str(n).lower().split()) for n in names.values()], dtype=object)
        out[kind] = int(keys.duplicated(keep=False).sum())
    return out


def build_ddi_adjacency(medications: list[str], pairs: pd.DataFrame | None) -> pd.DataFrame:
    """Square 0/1 DDI table over the medication vocabulary: symmetric, zero diagonal."""
    n = len(medications)
    adj = np.zeros((n, n), dtype=np.int64)
    if pairs is not None and len(pairs):
        pos = pd.Series(np.arange(n), index=medications)
        a, b = pairs["a"].map(pos), pairs["b"].map(pos)
        ok = a.notna() & b.notna()
        ia, ib = a[ok].astype(int).to_numpy(), b[ok].astype(int).to_numpy()
        adj[ia, ib] = 1
        adj[ib, ia] = 1
        np.fill_diagonal(adj, 0)
    return pd.DataFrame(adj, index=pd.Index(medications, name="atc3"), columns=medications)


def ddi_rate_of_visits(medications: pd.Series, vocab_meds: list[str], adj: np.ndarray) -> float:
    """Pooled DDI rate of the ground-truth medication sets (interacting pairs / all pairs)."""
    from scipy import sparse

    lengths = _lengths(medications)
    if lengths.sum() == 0:
        return 0.0
    rows = np.repeat(np.arange(len(medications)), lengths)
    pos: defaultdict[str, int] = defaultdict(lambda: -1, {m: i for i, m in enumerate(vocab_meds)})
    cols = np.fromiter(
        map(pos.__getitem__, chain.from_iterable(medications)),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    ok = cols >= 0
    y = sparse.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float64), (rows[ok], cols[ok])),
        shape=(len(medications), len(vocab_meds)),
    )
    y.data[:] = 1.0  # duplicates (if any) count once
    upper = sparse.csr_matrix(np.triu(np.maximum(adj, adj.T), k=1).astype(np.float64))
    inter = float((y @ upper).multiply(y).sum())
    k = np.asarray(y.sum(1)).ravel()
    total = float((k * (k - 1) / 2).sum())
    return round(inter / total, 6) if total else 0.0


def _lengths(col: pd.Series) -> np.ndarray:
    return np.fromiter(map(len, col), dtype=np.int64, count=len(col))


def cohort_stats(visits: pd.DataFrame, vocab: dict, ddi: pd.DataFrame) -> dict:
    n_vis = visits.groupby("subject_id").size()
    n_dx, n_px, n_med = (_lengths(visits[c]) for c in CODE_TYPES)
    return {
        "patients": int(len(n_vis)),
        "visits": int(len(visits)),
        "single_visit_patients": int((n_vis == 1).sum()),
        "single_visit_share": _ratio((n_vis == 1).sum(), len(n_vis)),
        "max_visits_per_patient": int(n_vis.max()),
        "mean_visits_per_patient": round(float(n_vis.mean()), 4),
        "n_medications": len(vocab["medication"]),
        "n_diagnoses": len(vocab["diagnosis"]),
        "n_procedures": len(vocab["procedure"]),
        "mean_diagnoses_per_visit": round(float(n_dx.mean()), 4),
        "mean_procedures_per_visit": round(float(n_px.mean()), 4),
        "mean_medications_per_visit": round(float(n_med.mean()), 4),
        "max_diagnoses_per_visit": int(n_dx.max()),
        "max_procedures_per_visit": int(n_px.max()),
        "max_medications_per_visit": int(n_med.max()),
        "ddi_pairs_in_vocab": int(np.triu(ddi.to_numpy(), k=1).sum()),
        "ddi_rate_ground_truth": ddi_rate_of_visits(
            visits["medications"], vocab["medication"], ddi.to_numpy()
        ),
    }
