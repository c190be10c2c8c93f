"""Malformed raw data (issue 13): corruptions of the MIMIC-III and MIMIC-IV demo tables.

Each case corrupts a copy of a slice of a real demo (30 patients, written under tmp_path; the
demos and the aux files in ../shared/data are read in place, never changed) and checks its
expected outcome:

- ``works``: the ingest reads it as the clean copy (same visits, same samples) and reports how;
- ``drop``: the bad rows are dropped and counted by reason in ``ingest_report["dropped"]``;
- ``error``: one ``IngestInputError`` whose message names the file, the column or the parameter.

The table of cases is in docs/reliability.md ("Malformed raw data"), one row per ``Case``.
"""

from __future__ import annotations

import codecs
import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from demo_helpers import env_ingest

from leader_kedro.contracts import IngestInputError
from leader_kedro.ingest.stage import run_ingest

AUX_FILES = (  # the aux files of conf/mimic3 and conf/mimic4, found under aux_dir
    "gamenet/ndc2rxnorm_mapping.txt",
    "derived/rxcui2atc4_fabkury2020.csv",
    "derived/ndc2atc3_molerec.csv",
    "derived/ddi_pairs_atc3_safedrug.csv",
    "fabkury_atcd/WHO ATC-DDD 2021-12-03.csv",
)


# ---------------------------------------------------------------------------------------------
# the demo slices (written once per session) and their clean ingest
# ---------------------------------------------------------------------------------------------
def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, compression="gzip" if path.suffix == ".gz" else None)


def edit(path: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite a table (CSV or CSV.gz) through ``fn``; every value stays text, as written."""
    _write(fn(_read(path)), path)


def _slice_mimic3(demo: Path, out: Path) -> None:
    adm = _read(demo / "ADMISSIONS.csv")
    n = adm.groupby("subject_id").size()
    keep = set(n[n > 1].index) | set(sorted(n[n == 1].index, key=int)[:16])
    out.mkdir(parents=True)
    for name in ("PATIENTS", "ADMISSIONS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS"):
        df = _read(demo / f"{name}.csv")
        _write(df[df["subject_id"].isin(keep)], out / f"{name}.csv")
    for name in ("D_ICD_DIAGNOSES", "D_ICD_PROCEDURES"):
        shutil.copy(demo / f"{name}.csv", out / f"{name}.csv")


def _slice_mimic4(demo: Path, out: Path) -> None:
    hosp = demo / "hosp"
    keep = set(sorted(_read(hosp / "patients.csv.gz")["subject_id"], key=int)[:30])
    (out / "hosp").mkdir(parents=True)
    for name in ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions"):
        df = _read(hosp / f"{name}.csv.gz")
        _write(df[df["subject_id"].isin(keep)], out / "hosp" / f"{name}.csv.gz")
    for kind in ("diagnoses", "procedures"):  # the dictionaries, cut to the codes in the slice
        used = _read(out / "hosp" / f"{kind}_icd.csv.gz")
        used = set(zip(used["icd_version"], used["icd_code"], strict=True))
        d = _read(hosp / f"d_icd_{kind}.csv.gz")
        pairs = pd.Series(list(zip(d["icd_version"], d["icd_code"], strict=True)), index=d.index)
        _write(d[pairs.isin(used)], out / "hosp" / f"d_icd_{kind}.csv.gz")


@pytest.fixture(scope="session")
def slices(shared_data, tmp_path_factory) -> dict[str, Path]:
    if not (shared_data / "mimic4_demo" / "hosp").is_dir():
        pytest.skip(f"MIMIC-IV demo not found at {shared_data / 'mimic4_demo'}")
    root = tmp_path_factory.mktemp("demo_slices")
    _slice_mimic3(shared_data / "mimic3_demo", root / "mimic3")
    _slice_mimic4(shared_data / "mimic4_demo", root / "mimic4")
    return {"mimic3": root / "mimic3", "mimic4": root / "mimic4", "aux": shared_data / "aux"}


def ingest(source: str, raw: Path, aux: Path) -> dict:
    return run_ingest(source, raw, aux, env_ingest(source), seed=42)


@pytest.fixture(scope="session")
def clean(slices) -> dict[str, dict]:
    return {s: ingest(s, slices[s], slices["aux"]) for s in ("mimic3", "mimic4")}


def visits_key(out: dict) -> list[tuple]:
    """What a visit is: ids, order, codes in order, age and profile."""
    v = out["visits"]
    cols = [c for c in v.columns if c not in ("diagnoses", "procedures", "medications", "age")]
    return [
        (
            *(row[c] for c in cols),
            tuple(row["diagnoses"]),
            tuple(row["procedures"]),
            tuple(row["medications"]),
            round(float(row["age"]), 6) if pd.notna(row["age"]) else None,
        )
        for _, row in v.iterrows()
    ]


def dropped(out: dict, key: str) -> int:
    return int(out["report"]["dropped"]["rows"].get(key, 0))


# ---------------------------------------------------------------------------------------------
# the corruptions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One corruption: ``corrupt(raw, aux)`` edits the copies; ``outcome`` is works, drop or
    error; ``expect`` is the error's regex, or ``check(out, clean)`` for works and drop."""

    id: str
    source: str
    corrupt: Callable[[Path, Path], None]
    outcome: str
    expect: str | Callable[[dict, dict], None] | None = None
    aux: bool = False  # the case corrupts a copy of the aux files


def _rows(path: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, Path], None]:
    return lambda raw, aux: edit(raw / path, fn)


def _set(col: str, value: str, rows: slice = slice(0, 3)):
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[df.index[rows], col] = value
        return df

    return fn


def _encode(path: str, encoding: str, fn=None, bom: bool = False):
    def corrupt(raw: Path, aux: Path) -> None:
        p = raw / path
        df = _read(p)
        text = (fn(df) if fn else df).to_csv(index=False)
        p.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode(encoding))

    return corrupt


def _delimiter(path: str, sep: str):
    def corrupt(raw: Path, aux: Path) -> None:
        _read(raw / path).to_csv(raw / path, index=False, sep=sep)

    return corrupt


def _same(extra: Callable[[dict, dict], None] | None = None):
    def check(out: dict, base: dict) -> None:
        assert visits_key(out) == visits_key(base)
        for split in ("train", "val", "test"):
            assert out["samples"][split]["sample_id"].tolist() == (
                base["samples"][split]["sample_id"].tolist()
            )
        if extra:
            extra(out, base)

    return check


def _format(table: str, **expected):
    def extra(out: dict, base: dict) -> None:
        fmt = out["report"]["file_formats"][table]
        assert {k: fmt[k] for k in expected} == expected

    return extra


def _drop(key: str, n: int, same_visits: bool = True):
    def check(out: dict, base: dict) -> None:
        assert dropped(out, key) == n, out["report"]["dropped"]["rows"]
        assert dropped(base, key) == 0
        if same_visits:
            assert visits_key(out) == visits_key(base)

    return check


# --- encodings ---------------------------------------------------------------------------------
def _espanol(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(language="ESPAÑOL")


def _check_espanol(out: dict, base: dict) -> None:
    assert (out["visits"]["language"] == "ESPAÑOL").all()
    assert out["vocab"]["profile"]["language"] == ["unknown", "ESPAÑOL"]
    assert visits_key(out) == visits_key({"visits": base["visits"].assign(language="ESPAÑOL")})
    assert out["report"]["file_formats"]["ADMISSIONS"]["encoding"] == "latin-1"


def _late_latin1(raw: Path, aux: Path) -> None:
    """A non-UTF-8 byte in the last row of D_ICD_DIAGNOSES (1.3 MB): past the first 64 KiB."""
    p = raw / "D_ICD_DIAGNOSES.csv"
    df = _read(p)
    df.loc[df.index[-1], "short_title"] = "Fi\u00e8vre"
    p.write_bytes(df.to_csv(index=False).encode("latin-1"))


# --- keys, duplicates, order, dates -----------------------------------------------------------
def _duplicate(n: int):
    return lambda df: pd.concat([df, df.iloc[:n]], ignore_index=True)


def _shuffle(raw: Path, aux: Path) -> None:
    """Admissions in reverse file order (dates out of order), code rows shuffled."""
    edit(raw / "ADMISSIONS.csv", lambda d: d.iloc[::-1])
    edit(raw / "DIAGNOSES_ICD.csv", lambda d: d.sample(frac=1.0, random_state=0))
    edit(raw / "PRESCRIPTIONS.csv", lambda d: d.sample(frac=1.0, random_state=1))


def _born_after_admission(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[0], "dob"] = "2199-01-01 00:00:00"  # every demo admission is before 2199
    return df


def _check_before_birth(out: dict, base: dict) -> None:
    c = out["report"]["cohort"]["age"]
    assert c["n_before_birth"] >= 1 and base["report"]["cohort"]["age"]["n_before_birth"] == 0
    assert c["n_unknown"] == base["report"]["cohort"]["age"]["n_unknown"] + c["n_before_birth"]
    assert len(out["visits"]) == len(base["visits"])


def _orphan_or_other_subject(what: str):
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        col = "hadm_id" if what == "orphan" else "subject_id"
        df.loc[df.index[:4], col] = "99999999"
        return df

    return fn


# --- codes and NDCs ---------------------------------------------------------------------------
def _pad(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(icd9_code=" " + df["icd9_code"] + "  ")


def _dotted_icd9(kind: str):
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        c = df["icd9_code"]
        cut = 3 if kind == "dx" else 2
        cut_e = 4  # E-codes: E880.9
        dotted = c.where(c.str.len() <= cut, c.str[:cut] + "." + c.str[cut:])
        dotted = dotted.where(~c.str.startswith("E"), c.str[:cut_e] + "." + c.str[cut_e:])
        return df.assign(icd9_code=dotted.str.rstrip("."))

    return fn


def _ndc(fn: Callable[[pd.Series], pd.Series]):
    def edit_ndc(df: pd.DataFrame) -> pd.DataFrame:
        ndc = df["ndc"]
        real = ndc.str.len() == 11
        return df.assign(ndc=ndc.where(~real, fn(ndc[real])))

    return edit_ndc


def _blank_ndc(n: int):
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[df.index[df["ndc"].str.len() == 11][:n], "ndc"] = ""
        return df

    return fn


def _same_mapping(out: dict, base: dict) -> None:
    for key in ("prescription_rows_mapped", "distinct_ndc", "distinct_ndc_mapped"):
        assert out["report"]["mapping"][key] == base["report"]["mapping"][key], key


def _icd10_codes(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:5], "icd9_code"] = ["I10", "E119", "Z7901", "N179", "J189"]
    return df


# --- compression, folders, layout ---------------------------------------------------------------
def _truncate_gz(path: str):
    def corrupt(raw: Path, aux: Path) -> None:
        data = (raw / path).read_bytes()
        (raw / path).write_bytes(data[: len(data) // 2])

    return corrupt


def _garbage_gz(raw: Path, aux: Path) -> None:
    p = raw / "hosp" / "diagnoses_icd.csv.gz"
    data = bytearray(p.read_bytes())
    data[200:1200] = bytes((i * 37) % 256 for i in range(1000))
    p.write_bytes(bytes(data))


def _plain_named_gz(raw: Path, aux: Path) -> None:
    p = raw / "hosp" / "procedures_icd.csv.gz"
    p.write_bytes(gzip.decompress(p.read_bytes()))


def _gzipped_mimic3(raw: Path, aux: Path) -> None:
    p = raw / "PRESCRIPTIONS.csv"
    (raw / "PRESCRIPTIONS.csv.gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()


def _move(src: str, dst: str):
    def corrupt(raw: Path, aux: Path) -> None:
        (raw / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(raw / src, raw / dst)

    return corrupt


def _hosp_at_root(raw: Path, aux: Path) -> None:
    for p in (raw / "hosp").iterdir():
        shutil.move(p, raw / p.name)
    (raw / "hosp").rmdir()


def _unquoted_comma(raw: Path, aux: Path) -> None:
    p = raw / "ADMISSIONS.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3] + ",FEVER, CHILLS"  # two fields too many: a value with an unquoted comma
    p.write_text("\n".join(lines) + "\n")


def _cut_mid_line(raw: Path, aux: Path) -> None:
    p = raw / "PROCEDURES_ICD.csv"
    text = p.read_text()
    p.write_text(text[: len(text) - 9])  # a copy cut short, inside its last line


def _float_ids(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(hadm_id=df["hadm_id"] + ".0", subject_id=df["subject_id"] + ".0")


# --- MIMIC-IV versions ----------------------------------------------------------------------------
def _version_missing(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:6], "icd_version"] = ""
    return df


# --- extremes -------------------------------------------------------------------------------------
def _two_hundred_visits(raw: Path, aux: Path) -> None:
    """One single-visit patient gets 199 more admissions, 30 days apart, with the same codes."""
    adm = _read(raw / "ADMISSIONS.csv")
    n = adm.groupby("subject_id").size()
    subject = sorted(n[n == 1].index, key=int)[0]
    first = adm[adm["subject_id"] == subject].iloc[0]
    t0 = pd.Timestamp(first["admittime"])
    new_ids = [str(900000 + i) for i in range(199)]
    extra = pd.DataFrame([first] * 199)
    extra["hadm_id"] = new_ids
    extra["admittime"] = [str(t0 + pd.Timedelta(days=30 * (i + 1))) for i in range(199)]
    _write(pd.concat([adm, extra], ignore_index=True), raw / "ADMISSIONS.csv")
    for name in ("DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS"):
        df = _read(raw / f"{name}.csv")
        rows = df[df["hadm_id"] == first["hadm_id"]]
        copies = [rows.assign(hadm_id=h) for h in new_ids]
        _write(pd.concat([df, *copies], ignore_index=True), raw / f"{name}.csv")


def _check_two_hundred(out: dict, base: dict) -> None:
    c = out["report"]["cohort"]
    assert c["max_visits_per_patient"] == 200
    assert c["visits"] == base["report"]["cohort"]["visits"] + 199
    samples = pd.concat(out["samples"].values())
    long = samples[samples["n_past"] == 199]
    assert len(long) == 1 and len(long["diagnoses"].iloc[0]) == 200
    assert len(long["medications"].iloc[0]) == 199


def _five_hundred_codes(raw: Path, aux: Path) -> None:
    """The first admission gets 500 more (distinct, real) diagnosis codes, SEQ_NUM 101..600."""
    dx = _read(raw / "DIAGNOSES_ICD.csv")
    hadm = _read(raw / "ADMISSIONS.csv")["hadm_id"].iloc[0]
    own = dx[dx["hadm_id"] == hadm]
    codes = [c for c in _read(raw / "D_ICD_DIAGNOSES.csv")["icd9_code"] if c not in set(own)]
    extra = pd.DataFrame(
        {
            "row_id": [str(10**7 + i) for i in range(500)],
            "subject_id": own["subject_id"].iloc[0],
            "hadm_id": hadm,
            "seq_num": [str(101 + i) for i in range(500)],
            "icd9_code": codes[:500],
        }
    )
    _write(pd.concat([dx, extra], ignore_index=True), raw / "DIAGNOSES_ICD.csv")


def _check_five_hundred(out: dict, base: dict) -> None:
    v = out["visits"].set_index("hadm_id")
    raw = Path(out["manifest"]["tables"]["diagnoses"])
    dx = pd.read_csv(raw, dtype={"icd9_code": str})
    hadm = int(pd.read_csv(out["manifest"]["tables"]["admissions"])["hadm_id"].iloc[0])
    mine = dx[dx["hadm_id"] == hadm].sort_values("seq_num", kind="stable")
    assert list(v.loc[hadm, "diagnoses"]) == list(dict.fromkeys(mine["icd9_code"]))
    assert out["report"]["cohort"]["max_diagnoses_per_visit"] >= 500


# --- aux files ------------------------------------------------------------------------------------
def _aux_bom(raw: Path, aux: Path) -> None:
    p = aux / "ndc2rxnorm_mapping.txt"
    p.write_bytes(codecs.BOM_UTF8 + p.read_bytes())


def _aux_latin1_semicolon(raw: Path, aux: Path) -> None:
    p = aux / "rxcui2atc4_fabkury2020.csv"
    df = _read(p)
    df.loc[df.index[-1], "atc4_name"] = "D\u00e9riv\u00e9s"
    p.write_bytes(df.to_csv(index=False, sep=";").encode("latin-1"))


def _aux_cut_dict(raw: Path, aux: Path) -> None:
    p = aux / "ndc2rxnorm_mapping.txt"
    text = p.read_text()
    p.write_text(text[: len(text) // 2])


M3, M4 = "mimic3", "mimic4"
CASES = [
    # encodings and delimiters: just work, and the report says how the file was read
    Case("utf8_bom", M3, _encode("ADMISSIONS.csv", "utf-8", bom=True), "works",
         _same(_format("ADMISSIONS", encoding="utf-8-sig"))),
    Case("latin1", M3, _encode("ADMISSIONS.csv", "latin-1", _espanol), "works", _check_espanol),
    Case("latin1_after_64kib", M3, _late_latin1, "works",
         _same(_format("D_ICD_DIAGNOSES", encoding="latin-1"))),
    Case("semicolon", M3, _delimiter("DIAGNOSES_ICD.csv", ";"), "works",
         _same(_format("DIAGNOSES_ICD", delimiter=";"))),
    Case("tab", M4, _delimiter("hosp/procedures_icd.csv.gz", "\t"), "works",
         _same(_format("PROCEDURES_ICD", delimiter="\t"))),
    # keys: NaN and empty
    Case("empty_hadm_id", M3, _rows("DIAGNOSES_ICD.csv", _set("hadm_id", "")), "drop",
         _drop("DIAGNOSES_ICD:missing_hadm_or_subject_id", 3, same_visits=False)),
    Case("nan_subject_id", M4, _rows("hosp/prescriptions.csv.gz", _set("subject_id", "NaN", slice(0, 4))),
         "drop", _drop("PRESCRIPTIONS:missing_hadm_or_subject_id", 4, same_visits=False)),
    Case("empty_admission_key", M3, _rows("ADMISSIONS.csv", _set("hadm_id", "", slice(0, 1))),
         "drop", _drop("ADMISSIONS:missing_hadm_or_subject_id", 1, same_visits=False)),
    Case("empty_ndc", M3, _rows("PRESCRIPTIONS.csv", _blank_ndc(5)), "drop",
         lambda out, base: _ndc_missing_grows(out, base, 5)),
    # duplicated rows
    Case("duplicate_diagnosis_rows", M3, _rows("DIAGNOSES_ICD.csv", _duplicate(7)), "drop",
         _drop("DIAGNOSES_ICD:duplicate_rows", 7)),
    Case("duplicate_admissions", M4, _rows("hosp/admissions.csv.gz", _duplicate(3)), "drop",
         _drop("ADMISSIONS:duplicate_hadm_id", 3)),
    Case("duplicate_patients", M3, _rows("PATIENTS.csv", _duplicate(2)), "drop",
         _drop("PATIENTS:duplicate_subject_id", 2)),
    # dates: out of order, before birth, missing, not a date
    Case("admissions_out_of_order", M3, _shuffle, "works", _same()),
    Case("admission_before_birth", M3, _rows("PATIENTS.csv", _born_after_admission), "drop",
         _check_before_birth),
    Case("missing_admittime", M4, _rows("hosp/admissions.csv.gz", _set("admittime", "", slice(0, 2))),
         "drop", _drop("ADMISSIONS:missing_admittime", 2, same_visits=False)),
    Case("date_not_iso", M3, _rows("ADMISSIONS.csv", _set("admittime", "06/22/2192 13:40", slice(2, 3))),
         "error", r"Wrong type in column 'admittime' of .*ADMISSIONS\.csv: expected dates .*'06/22/2192 13:40'"),
    # codes with stray spaces or dots
    Case("codes_with_spaces", M3, _rows("DIAGNOSES_ICD.csv", _pad), "works", _same()),
    Case("icd9_with_dots", M3, lambda raw, aux: (
        edit(raw / "DIAGNOSES_ICD.csv", _dotted_icd9("dx")),
        edit(raw / "PROCEDURES_ICD.csv", _dotted_icd9("px"))), "works",
         _same(lambda out, base: _same_names(out, base))),
    # NDCs: without leading zeros, hyphenated, as numbers, in scientific notation
    Case("ndc_leading_zeros_lost", M3, _rows("PRESCRIPTIONS.csv", _ndc(lambda s: s.str.lstrip("0"))),
         "works", _same(_same_mapping)),
    Case("ndc_hyphenated", M4, _rows("hosp/prescriptions.csv.gz",
         _ndc(lambda s: s.str[:5] + "-" + s.str[5:9] + "-" + s.str[9:])), "works", _same(_same_mapping)),
    Case("ndc_as_float", M3, _rows("PRESCRIPTIONS.csv", _ndc(lambda s: s.str.lstrip("0") + ".0")),
         "works", _same(_same_mapping)),
    Case("ndc_scientific", M3, _rows("PRESCRIPTIONS.csv", _set("ndc", "3.38059E+08", slice(0, 2))),
         "error", r"NDC in scientific notation in column 'ndc' of .*PRESCRIPTIONS\.csv: e\.g\. '3\.38059E\+08'"),
    # compression
    Case("gzip_truncated", M4, _truncate_gz("hosp/prescriptions.csv.gz"), "error",
         r"Damaged file: .*prescriptions\.csv\.gz cannot be decompressed"),
    Case("gzip_corrupt", M4, _garbage_gz, "error",
         r"Damaged file: .*diagnoses_icd\.csv\.gz cannot be decompressed"),
    Case("plain_csv_named_gz", M4, _plain_named_gz, "works",
         _same(_format("PROCEDURES_ICD", compression="none"))),
    Case("gzipped_mimic3_table", M3, _gzipped_mimic3, "works",
         _same(_format("PRESCRIPTIONS", compression="gzip"))),
    # folders
    Case("table_in_wrong_folder", M3, _move("PRESCRIPTIONS.csv", "extra/PRESCRIPTIONS.csv"), "error",
         r"Missing file: expected PRESCRIPTIONS\.csv .* It is in another folder, .*extra, which is not read"),
    Case("mimic4_table_in_icu", M4, _move("hosp/diagnoses_icd.csv.gz", "icu/diagnoses_icd.csv.gz"),
         "error", r"Missing file: expected diagnoses_icd\.csv .* another folder, .*icu"),
    Case("mimic4_without_hosp_folder", M4, _hosp_at_root, "works", _same()),
    # mixed ICD-9 and ICD-10 without a version
    Case("icd_version_column_missing", M4,
         _rows("hosp/diagnoses_icd.csv.gz", lambda d: d.drop(columns=["icd_version"])), "error",
         r"Missing or misnamed column\(s\) \['icd_version'\] in .*diagnoses_icd\.csv\.gz"),
    Case("icd_version_empty", M4, _rows("hosp/diagnoses_icd.csv.gz", _version_missing), "drop",
         _drop("DIAGNOSES_ICD:icd_version_missing", 6, same_visits=False)),
    Case("icd_version_unknown", M4, _rows("hosp/procedures_icd.csv.gz", _set("icd_version", "11", slice(0, 1))),
         "error", r"Wrong value in column 'icd_version' of .*procedures_icd\.csv\.gz: expected 9 or 10, found e\.g\. '11'"),
    Case("icd10_codes_in_mimic3", M3, _rows("DIAGNOSES_ICD.csv", _icd10_codes), "drop",
         _drop("DIAGNOSES_ICD:code_not_icd9", 5, same_visits=False)),
    # rows that do not belong
    Case("codes_of_unknown_admission", M3, _rows("PROCEDURES_ICD.csv", _orphan_or_other_subject("orphan")),
         "drop", _drop("procedures:hadm_id_not_in_admissions", 4, same_visits=False)),
    Case("codes_of_another_patient", M4, _rows("hosp/diagnoses_icd.csv.gz", _orphan_or_other_subject("subject")),
         "drop", lambda out, base: _other_subject(out, base)),
    # damaged CSV
    Case("unquoted_delimiter_in_value", M3, _unquoted_comma, "error",
         r"Malformed CSV: .*ADMISSIONS\.csv: Expected 19 columns, got 21"),
    Case("csv_cut_mid_line", M3, _cut_mid_line, "error",
         r"Malformed CSV: .*PROCEDURES_ICD\.csv: Expected 5 columns, got"),
    Case("ids_written_as_floats", M3, _rows("DIAGNOSES_ICD.csv", _float_ids), "works", _same()),
    Case("id_not_a_number", M4, _rows("hosp/diagnoses_icd.csv.gz", _set("hadm_id", "2x1", slice(1, 2))),
         "error", r"Wrong type in column 'hadm_id' of .*diagnoses_icd\.csv\.gz: expected numbers, found e\.g\. '2x1' \(1 bad values\)"),
    # extremes
    Case("patient_with_200_visits", M3, _two_hundred_visits, "works", _check_two_hundred),
    Case("visit_with_500_codes", M3, _five_hundred_codes, "works", _check_five_hundred),
    # aux mapping files
    Case("aux_bom", M3, _aux_bom, "works", _same(_same_mapping), aux=True),
    Case("aux_latin1_semicolon", M4, _aux_latin1_semicolon, "works", _same(_same_mapping), aux=True),
    Case("aux_dict_cut", M3, _aux_cut_dict, "error",
         r"Wrong format in .*ndc2rxnorm_mapping\.txt: expected a Python dict literal", aux=True),
]  # fmt: skip


def _ndc_missing_grows(out: dict, base: dict, n: int) -> None:
    key = "PRESCRIPTIONS:ndc_missing_or_zero"
    assert dropped(out, key) == dropped(base, key) + n


def _same_names(out: dict, base: dict) -> None:
    assert out["code_names"] == base["code_names"]


def _other_subject(out: dict, base: dict) -> None:
    assert dropped(out, "diagnoses:subject_id_differs_from_admission") == 4
    assert dropped(base, "diagnoses:subject_id_differs_from_admission") == 0


def test_the_table_has_at_least_20_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 20
    assert {c.outcome for c in CASES} == {"works", "drop", "error"}
    assert {c.source for c in CASES} == {M3, M4}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_raw_data(case: Case, slices, clean, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(slices[case.source], raw)
    aux = slices["aux"]
    if case.aux:  # copies of the aux files this configuration reads, flattened
        aux = tmp_path / "aux"
        aux.mkdir()
        for rel in AUX_FILES:
            shutil.copy(slices["aux"] / rel, aux / Path(rel).name)
    case.corrupt(raw, aux)
    if case.outcome == "error":
        assert isinstance(case.expect, str)
        with pytest.raises(IngestInputError, match=case.expect):
            ingest(case.source, raw, aux)
        return
    out = ingest(case.source, raw, aux)
    assert callable(case.expect)
    case.expect(out, clean[case.source])
    # whatever was dropped is in the report, by reason, and the cohort still holds
    assert out["report"]["cohort"]["visits"] == len(out["visits"]) > 0
