"""Readers for the raw MIMIC-III / MIMIC-IV tables and the auxiliary mapping files, with validation.

Every reader returns tables in one standard, lower-case shape so that ``cohort.py`` never needs to
know which source it is looking at:

- ``patients``: subject_id, gender, and ``dob`` (MIMIC-III) or ``anchor_age``/``anchor_year`` (MIMIC-IV)
- ``admissions``: subject_id, hadm_id, admittime, admission_type, insurance, language,
  marital_status, ethnicity (MIMIC-IV ``race`` is renamed to ``ethnicity``)
- ``diagnoses`` / ``procedures``: subject_id, hadm_id, seq_num (float, NaN when missing), code (str;
  MIMIC-IV codes are ``f"{version}_{code}"``). SEQ_NUM is the code's priority inside the admission:
  1 is the principal diagnosis (or the first procedure).
- ``prescriptions``: subject_id, hadm_id, ndc (str, leading zeros kept)
- ``d_diagnoses`` / ``d_procedures``: code, title

Bad input stops with :class:`IngestInputError`, whose message names the file, the column or the
parameter, and what was expected.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pandas as pd

from leader_kedro.contracts import IngestInputError

SOURCES = ("synthetic", "mimic3", "mimic4")


# --------------------------------------------------------------------------------------------
# Table specs: logical name -> (file stem, {column: kind}); kinds: id, int, str, code, date, float
# --------------------------------------------------------------------------------------------
_PROFILE_COLS = {
    "admission_type": "str",
    "insurance": "str",
    "language": "str",
    "marital_status": "str",
}
MIMIC3_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "patients": ("PATIENTS", {"subject_id": "id", "gender": "str", "dob": "date"}),
    "admissions": (
        "ADMISSIONS",
        {
            "subject_id": "id",
            "hadm_id": "id",
            "admittime": "date",
            **_PROFILE_COLS,
            "ethnicity": "str",
        },
    ),
    "diagnoses": (
        "DIAGNOSES_ICD",
        {"subject_id": "id", "hadm_id": "id", "seq_num": "int", "icd9_code": "code"},
    ),
    "procedures": (
        "PROCEDURES_ICD",
        {"subject_id": "id", "hadm_id": "id", "seq_num": "int", "icd9_code": "code"},
    ),
    "prescriptions": ("PRESCRIPTIONS", {"subject_id": "id", "hadm_id": "id", "ndc": "code"}),
    "d_diagnoses": (
        "D_ICD_DIAGNOSES",
        {"icd9_code": "code", "short_title": "str", "long_title": "str"},
    ),
    "d_procedures": (
        "D_ICD_PROCEDURES",
        {"icd9_code": "code", "short_title": "str", "long_title": "str"},
    ),
}
MIMIC4_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "patients": (
        "patients",
        {"subject_id": "id", "gender": "str", "anchor_age": "float", "anchor_year": "float"},
    ),
    "admissions": (
        "admissions",
        {"subject_id": "id", "hadm_id": "id", "admittime": "date", **_PROFILE_COLS, "race": "str"},
    ),
    "diagnoses": (
        "diagnoses_icd",
        {
            "subject_id": "id",
            "hadm_id": "id",
            "seq_num": "int",
            "icd_code": "code",
            "icd_version": "code",
        },
    ),
    "procedures": (
        "procedures_icd",
        {
            "subject_id": "id",
            "hadm_id": "id",
            "seq_num": "int",
            "icd_code": "code",
            "icd_version": "code",
        },
    ),
    "prescriptions": ("prescriptions", {"subject_id": "id", "hadm_id": "id", "ndc": "code"}),
    "d_diagnoses": (
        "d_icd_diagnoses",
        {"icd_code": "code", "icd_version": "code", "long_title": "str"},
    ),
    "d_procedures": (
        "d_icd_procedures",
        {"icd_code": "code", "icd_version": "code", "long_title": "str"},
    ),
}


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise IngestInputError(
            f"Unknown parameter `source`: {source!r}; expected one of {', '.join(SOURCES)} "
            "(set it in conf/base/parameters.yml or with --params source=...)."
        )
    return source


def _reader_source(source: str) -> str:
    """The synthetic cohort is written in the MIMIC-III schema and read back by that reader."""
    return "mimic3" if check_source(source) == "synthetic" else source


def table_specs(source: str) -> dict[str, tuple[str, dict[str, str]]]:
    return MIMIC4_TABLES if _reader_source(source) == "mimic4" else MIMIC3_TABLES


def find_table(raw_dir: str | Path, stem: str, source: str) -> Path:
    """``STEM.csv`` / ``STEM.csv.gz`` in upper or lower case (MIMIC-IV: also under ``hosp/``)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise IngestInputError(
            f"Parameter `raw_dir` points to {raw_dir}, which is not a directory; expected the folder "
            f"holding the {source} tables (e.g. --params raw_dir=PATH)."
        )
    folders = [raw_dir / "hosp", raw_dir] if _reader_source(source) == "mimic4" else [raw_dir]
    names = [f"{s}{ext}" for s in (stem.upper(), stem.lower()) for ext in (".csv", ".csv.gz")]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise IngestInputError(
        f"Missing file: expected {stem}.csv or {stem}.csv.gz (upper or lower case) in "
        + " or ".join(str(f) for f in folders)
        + f" for source {source!r}."
    )


def locate_tables(raw_dir: str | Path, source: str) -> dict[str, str]:
    return {
        name: str(find_table(raw_dir, stem, source))
        for name, (stem, _) in table_specs(source).items()
    }


def read_table(path: str | Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read the given columns (matched case-insensitively, returned lower-case) and check types."""
    path = Path(path)
    try:
        header = pd.read_csv(path, nrows=0)
    except pd.errors.EmptyDataError as exc:
        raise IngestInputError(f"Empty table: {path} has no header and no rows.") from exc
    by_lower = {str(c).strip().lower(): c for c in header.columns}
    missing = [c for c in columns if c not in by_lower]
    if missing:
        raise IngestInputError(
            f"Missing or misnamed column(s) {missing} in {path}; expected columns "
            f"{list(columns)} (upper or lower case), found {list(header.columns)}."
        )
    usecols = [by_lower[c] for c in columns]
    text_cols = {by_lower[c]: "string" for c, kind in columns.items() if kind in ("code", "str")}
    try:
        df = pd.read_csv(path, usecols=usecols, dtype=text_cols, engine="pyarrow")
    except Exception:  # pyarrow refuses some inputs (ragged quoting); the C engine is the fallback
        df = pd.read_csv(path, usecols=usecols, dtype=text_cols, low_memory=False)
    df.columns = [str(c).strip().lower() for c in df.columns]
    df = df[list(columns)]
    if df.empty:
        raise IngestInputError(
            f"Empty table: {path} has a header but no rows; expected at least one row."
        )
    for col, kind in columns.items():
        df[col] = _coerce(df[col], kind, path, col)
    return df


def _coerce(s: pd.Series, kind: str, path: Path, col: str) -> pd.Series:
    if kind in ("code", "str"):
        out = s.astype("string").str.strip()
        return out.mask(out == "")
    if kind in ("id", "int", "float"):
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            out = s
        else:
            out = pd.to_numeric(s.astype("string").str.strip(), errors="coerce")
            bad = out.isna() & s.notna() & (s.astype("string").str.strip() != "")
            if bad.any():
                raise IngestInputError(
                    f"Wrong type in column {col!r} of {path}: expected numbers, found e.g. "
                    f"{s[bad].iloc[0]!r} ({int(bad.sum())} bad values)."
                )
        if kind == "id":
            frac = out.dropna() % 1
            if (frac != 0).any():
                raise IngestInputError(
                    f"Wrong type in column {col!r} of {path}: expected integer ids, found "
                    f"{out.dropna()[frac != 0].iloc[0]!r}."
                )
            return out.astype("Int64")
        return out.astype("float64")
    if kind == "date":
        if pd.api.types.is_datetime64_any_dtype(s):
            return s
        out = pd.to_datetime(s.astype("string").str.strip(), errors="coerce", format="ISO8601")
        bad = out.isna() & s.notna() & (s.astype("string").str.strip() != "")
        if bad.any():
            raise IngestInputError(
                f"Wrong type in column {col!r} of {path}: expected dates like "
                f"'2164-10-23 21:09:00', found e.g. {s[bad].iloc[0]!r} ({int(bad.sum())} bad values)."
            )
        return out
    raise ValueError(kind)


def read_raw_tables(paths: dict[str, str], source: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """Read every raw table into the standard shape; returns (tables, rows_read per table)."""
    specs = table_specs(source)
    raw = {name: read_table(paths[name], specs[name][1]) for name in specs}
    rows_read = {specs[name][0]: int(len(df)) for name, df in raw.items()}
    if _reader_source(source) == "mimic4":
        raw["admissions"] = raw["admissions"].rename(columns={"race": "ethnicity"})
        for name in ("diagnoses", "procedures", "d_diagnoses", "d_procedures"):
            raw[name] = _versioned(raw[name])
        for name in ("d_diagnoses", "d_procedures"):
            raw[name] = raw[name].rename(columns={"long_title": "title"})
    else:
        for name in ("diagnoses", "procedures", "d_diagnoses", "d_procedures"):
            raw[name] = raw[name].rename(columns={"icd9_code": "code"})
    return raw, rows_read


def _versioned(df: pd.DataFrame) -> pd.DataFrame:
    """MIMIC-IV mixes ICD-9 and ICD-10: ``code = f"{icd_version}_{icd_code}"`` (docs/contracts.md)."""
    version = df["icd_version"].str.replace(r"\.0$", "", regex=True)
    code = df["icd_code"].str.replace(".", "", regex=False)
    out = df.drop(columns=["icd_code", "icd_version"])
    out.insert(
        len(out.columns) - (1 if "long_title" in out.columns else 0), "code", version + "_" + code
    )
    return out


# --------------------------------------------------------------------------------------------
# Auxiliary files
# --------------------------------------------------------------------------------------------
def find_aux(aux_dir: str | Path, filename: str, parameter: str) -> Path:
    """Find an auxiliary file by its public name anywhere under ``aux_dir`` (or as a path)."""
    direct = Path(filename)
    if direct.is_absolute() and direct.is_file():
        return direct
    aux_dir = Path(aux_dir)
    if (aux_dir / filename).is_file():
        return aux_dir / filename
    matches = sorted(aux_dir.rglob(Path(filename).name), key=lambda p: (len(p.parts), str(p)))
    matches = [m for m in matches if m.is_file()]
    if not matches:
        raise IngestInputError(
            f"Missing file: auxiliary file {filename!r} (parameter `ingest.aux_files.{parameter}`) "
            f"was not found under aux_dir={aux_dir}; expected it there or in a sub-folder, or "
            f"override the file name with --params ingest.aux_files.{parameter}=NAME."
        )
    return matches[0]


def read_ndc2rxnorm(path: str | Path) -> pd.DataFrame:
    """GAMENet ``ndc2rxnorm_mapping.txt``: a Python dict literal, parsed with ``ast.literal_eval``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise IngestInputError(
            f"Empty table: {path} is empty; expected a dict literal {{'NDC': 'RXCUI'}}."
        )
    try:
        mapping = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise IngestInputError(
            f"Wrong format in {path}: expected a Python dict literal {{'NDC11': 'RXCUI', ...}} "
            f"(GAMENet ndc2rxnorm_mapping.txt); it could not be parsed ({exc.__class__.__name__})."
        ) from exc
    if not isinstance(mapping, dict):
        raise IngestInputError(
            f"Wrong format in {path}: expected a dict literal, found {type(mapping).__name__}."
        )
    df = pd.DataFrame({"ndc": list(mapping.keys()), "rxcui": list(mapping.values())}).astype(
        "string"
    )
    df["ndc"], df["rxcui"] = df["ndc"].str.strip(), df["rxcui"].str.strip()
    df = df[df["rxcui"].notna() & (df["rxcui"] != "")]
    if df.empty:
        raise IngestInputError(f"Empty table: {path} holds no NDC->RXCUI pairs.")
    return df.reset_index(drop=True)


def _read_aux_csv(path: Path, columns: list[str], what: str, header: bool = True) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype="string")
    except pd.errors.EmptyDataError as exc:
        raise IngestInputError(f"Empty table: {path} ({what}) is empty.") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IngestInputError(
            f"Missing or misnamed column(s) {missing} in {path} ({what}); expected columns {columns} "
            f"(any case), found {list(df.columns)}."
        )
    df = df[columns].apply(lambda s: s.str.strip()).dropna()
    if df.empty:
        raise IngestInputError(f"Empty table: {path} ({what}) has no complete rows.")
    return df.reset_index(drop=True)


def read_rxcui2atc4(path: str | Path, choice: str = "first_sorted") -> tuple[pd.DataFrame, dict]:
    """RXCUI -> ATC4 (SafeDrug ``RXCUI2atc4.csv`` or fabkury ``rxcui2atc4_fabkury2020.csv``).

    One RXCUI may have several ATC4 codes: ``first_sorted`` keeps the smallest ATC4 (deterministic,
    independent of file order); ``first_in_file`` keeps the first row (SafeDrug's drop_duplicates).
    """
    df = _read_aux_csv(Path(path), ["rxcui", "atc4"], "RXCUI->ATC4 table")
    df = df.drop_duplicates()
    n_multi = int((df.groupby("rxcui")["atc4"].nunique() > 1).sum())
    if choice == "first_sorted":
        df = df.sort_values(["rxcui", "atc4"], kind="stable")
    elif choice != "first_in_file":
        raise IngestInputError(
            f"Unknown parameter `ingest.atc4_choice`: {choice!r}; expected first_sorted or first_in_file."
        )
    df = df.drop_duplicates("rxcui", keep="first").reset_index(drop=True)
    return df, {
        "rxcui_rows": int(len(df)),
        "rxcui_with_several_atc4": n_multi,
        "atc4_choice": choice,
    }


def read_ndc2atc3(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A direct NDC -> ATC3 table: ``ndc,atc3`` (MoleRec, flattened) or ``ndc11,...,atc4`` (fabkury).

    ATC codes are cut to their first 4 characters; an NDC with several ATC3 keeps the first sorted.
    """
    path = Path(path)
    header = [c.strip().lower() for c in pd.read_csv(path, nrows=0).columns]
    ndc_col = "ndc11" if "ndc11" in header and "ndc" not in header else "ndc"
    atc_col = "atc4" if "atc4" in header and "atc3" not in header else "atc3"
    df = _read_aux_csv(path, [ndc_col, atc_col], "NDC->ATC3 table")
    df = df.rename(columns={ndc_col: "ndc", atc_col: "atc3"})
    df["atc3"] = df["atc3"].str[:4]
    df = df.drop_duplicates()
    n_multi = int((df.groupby("ndc")["atc3"].nunique() > 1).sum())
    df = df.sort_values(["ndc", "atc3"]).drop_duplicates("ndc").reset_index(drop=True)
    return df, {"ndc_rows": int(len(df)), "ndc_with_several_atc3": n_multi}


def read_atc_names(path: str | Path) -> dict[str, str]:
    """WHO ATC index (fabkury/atcd): ATC level-3 code -> lower-cased name."""
    df = _read_aux_csv(Path(path), ["atc_code", "atc_name"], "WHO ATC names table")
    df = df[df["atc_code"].str.len() == 4]
    return dict(zip(df["atc_code"], df["atc_name"].str.lower(), strict=True))


def read_ddi_pairs_atc3(path: str | Path) -> pd.DataFrame:
    """Known interacting ATC3 pairs (``atc3_a,atc3_b``)."""
    df = _read_aux_csv(Path(path), ["atc3_a", "atc3_b"], "DDI ATC3 pair table")
    return df.rename(columns={"atc3_a": "a", "atc3_b": "b"}).assign(
        a=lambda d: d["a"].str[:4], b=lambda d: d["b"].str[:4]
    )


def read_drug_atc(path: str | Path) -> pd.DataFrame:
    """GAMENet ``drug-atc.csv``: no header, a CID then 1..n ATC codes per line -> (cid, atc3)."""
    path = Path(path)
    rows: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line in csv.reader(fh):
            cells = [c.strip() for c in line if c.strip()]
            if len(cells) >= 2:
                rows.extend((cells[0], atc[:4]) for atc in cells[1:])
    if not rows:
        raise IngestInputError(
            f"Empty table: {path} (drug-atc.csv) holds no 'CID,ATC,...' lines; expected one CID "
            "followed by its ATC codes per line."
        )
    return pd.DataFrame(rows, columns=["cid", "atc3"], dtype="string").drop_duplicates()


TWOSIDES_COLUMNS = ["stitch 1", "stitch 2", "polypharmacy side effect", "side effect name"]


def read_twosides(path: str | Path) -> pd.DataFrame:
    """TWOSIDES ``drug-DDI.csv`` (STITCH 1, STITCH 2, Polypharmacy Side Effect, Side Effect Name)."""
    df = _read_aux_csv(Path(path), TWOSIDES_COLUMNS, "TWOSIDES drug-DDI table")
    return df.rename(
        columns={
            "stitch 1": "cid_a",
            "stitch 2": "cid_b",
            "polypharmacy side effect": "se",
            "side effect name": "se_name",
        }
    )


def twosides_to_atc3_pairs(
    twosides: pd.DataFrame, drug_atc: pd.DataFrame, topk: int = 40
) -> tuple[pd.DataFrame, dict]:
    """GAMENet/SafeDrug DDI: keep the ``topk`` *least* frequent side-effect types, map CIDs to ATC3."""
    counts = twosides.groupby(["se", "se_name"]).size().reset_index(name="n")
    counts = counts.sort_values(["n", "se"], ascending=[False, True], kind="stable")
    keep = counts.tail(topk)["se"]
    rows = twosides[twosides["se"].isin(keep)].drop_duplicates(["cid_a", "cid_b"])
    pairs = rows.merge(drug_atc.rename(columns={"cid": "cid_a", "atc3": "a"}), on="cid_a")
    pairs = pairs.merge(drug_atc.rename(columns={"cid": "cid_b", "atc3": "b"}), on="cid_b")
    pairs = pairs[["a", "b"]].drop_duplicates().reset_index(drop=True)
    stats = {
        "side_effect_types": int(len(counts)),
        "side_effect_types_kept": int(len(keep)),
        "cid_pairs_kept": int(len(rows)),
        "atc3_pairs": int(len(pairs)),
    }
    return pairs, stats
