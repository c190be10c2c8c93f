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
import codecs
import csv
import gzip
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from leader_kedro.contracts import IngestInputError

logger = logging.getLogger(__name__)

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
        + _where_else(raw_dir, names, folders, source)
    )


def _where_else(raw_dir: Path, names: list[str], folders: list[Path], source: str) -> str:
    """A hint for a missing table: the same file in another folder, or the other MIMIC layout."""
    found = sorted(
        (p for p in raw_dir.rglob("*") if p.name in names and p.parent not in folders),
        key=lambda p: (len(p.parts), str(p)),
    )[:1]
    if found:
        return (
            f" It is in another folder, {found[0].parent}, which is not read: move it to "
            f"{folders[0]}, or point raw_dir to the folder holding all the tables."
        )
    if _reader_source(source) == "mimic3" and (raw_dir / "hosp").is_dir():
        return " raw_dir has a hosp/ folder: it looks like MIMIC-IV (use --env mimic4)."
    return ""


def locate_tables(raw_dir: str | Path, source: str) -> dict[str, str]:
    return {
        name: str(find_table(raw_dir, stem, source))
        for name, (stem, _) in table_specs(source).items()
    }


# --------------------------------------------------------------------------------------------
# File format: compression (by content), encoding, delimiter, header
# --------------------------------------------------------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
DELIMITERS = (",", ";", "\t", "|")
# what pandas reads as missing (its default na_values), so that both readers agree
NULL_VALUES = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]
_HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class FileFormat:
    """How a raw file is written: found from its first bytes, never from its name."""

    compression: str | None  # "gzip" or None
    encoding: str  # "utf-8" or "latin-1" (a file that is not valid UTF-8)
    bom: bool  # a UTF-8 byte-order mark (skipped)
    delimiter: str
    header: tuple[str, ...]  # the column names as written (Arrow matches them exactly)

    def describe(self) -> dict[str, Any]:
        return {
            "compression": self.compression or "none",
            "encoding": self.encoding + ("-sig" if self.bom else ""),
            "delimiter": self.delimiter,
        }


def _name(exc: BaseException) -> str:
    return "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__


def _damaged(path: Path, exc: BaseException) -> IngestInputError:
    return IngestInputError(
        f"Damaged file: {path} cannot be decompressed ({_name(exc)}: {exc}); it is a "
        "truncated or corrupt gzip file. Download or copy it again (check it against the "
        "release's SHA256SUMS)."
    )


def sniff_format(path: str | Path, expected: Sequence[str] = ()) -> FileFormat:
    """Compression (gzip magic bytes), encoding (UTF-8, a BOM, else latin-1) and delimiter
    (the one of , ; tab | whose header holds the most ``expected`` columns; ties: the comma)."""
    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(2)
    compression = "gzip" if magic == GZIP_MAGIC else None
    try:
        if compression:
            with gzip.open(path, "rb") as gz:
                head = gz.read(_HEAD_BYTES)
        else:
            with path.open("rb") as fh:
                head = fh.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from exc
    bom = head.startswith(codecs.BOM_UTF8)
    head = head[len(codecs.BOM_UTF8) :] if bom else head
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode(encoding, errors="replace")
    if not line.strip():
        raise IngestInputError(f"Empty table: {path} has no header and no rows.")
    wanted = {c.lower() for c in expected}
    best, best_cells, best_score = ",", [], -1
    for delimiter in DELIMITERS:
        cells = next(csv.reader([line], delimiter=delimiter))
        score = sum(c.strip().lower() in wanted for c in cells)
        if score > best_score:
            best, best_cells, best_score = delimiter, cells, score
    return FileFormat(compression, encoding, bom, best, tuple(best_cells))


# --------------------------------------------------------------------------------------------
# Raw tables
# --------------------------------------------------------------------------------------------
# Arrow types per kind, from strict to loose: a value the strict type refuses ('123.0' as an id,
# a date that is not ISO 8601) is read again with the looser type, and a column that is still
# refused is read as text, where the coercion below names the file, the column and an example.
_STRICT = {
    "id": pa.int64(),
    "int": pa.float64(),
    "float": pa.float64(),
    "date": pa.timestamp("s"),
}
_LOOSE = {"id": pa.float64(), "int": pa.float64(), "float": pa.float64()}
_TEXT = pa.dictionary(pa.int32(), pa.string())


def read_table(
    path: str | Path, columns: dict[str, str], normalise: dict[str, Callable] | None = None
) -> pd.DataFrame:
    """Read the given columns (matched case-insensitively, returned lower-case) and check types.

    Codes and text come back as pandas categoricals (one copy of each distinct value, stripped,
    empty = missing), ids as ``Int64``, counts and numbers as ``float64``, dates as
    ``datetime64[s]``. ``normalise`` maps a column to a function applied to its distinct values.
    """
    holder = [read_arrow(path, columns)[0]]
    return arrow_to_frame(holder, columns, Path(path), normalise)


def read_arrow(path: str | Path, columns: dict[str, str]) -> tuple[pa.Table, FileFormat]:
    """The columns as an Arrow table (the file's names; codes dictionary-encoded) and its format."""
    path = Path(path)
    fmt = sniff_format(path, list(columns))
    by_lower = {c.strip().lower(): c for c in fmt.header}
    missing = [c for c in columns if c not in by_lower]
    if missing:
        found = [c[:40] for c in fmt.header[:40]]
        raise IngestInputError(
            f"Missing or misnamed column(s) {missing} in {path}; expected columns "
            f"{list(columns)} (upper or lower case), found {found}."
        )
    names = {c: by_lower[c] for c in columns}
    levels = [
        {names[c]: _STRICT.get(k, _TEXT) for c, k in columns.items()},
        {names[c]: _LOOSE.get(k, _TEXT) for c, k in columns.items()},
        {names[c]: _TEXT for c in columns},
    ]
    encoding, newlines = fmt.encoding, False
    level = 0
    while True:
        try:
            table = _csv(path, fmt, encoding, newlines, levels[level])
            break
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            if "invalid UTF8" in msg and encoding == "utf-8":
                encoding = "latin-1"  # not UTF-8 past the first 64 KiB
            elif "CSV parse error" in msg and not newlines:
                newlines = True  # a quoted value holding a line break
            elif "CSV parse error" in msg:
                raise IngestInputError(
                    f"Malformed CSV: {path}: {msg.removeprefix('CSV parse error: ')}; expected "
                    f"{len(fmt.header)} fields separated by {fmt.delimiter!r} on every line (a cut "
                    "file, or a delimiter inside an unquoted value?)."
                ) from None
            elif "conversion error" in msg and level < len(levels) - 1:
                level += 1
            else:
                raise IngestInputError(f"Unreadable table {path}: {msg}") from None
        except (OSError, EOFError, zlib.error) as exc:
            if fmt.compression:
                raise _damaged(path, exc) from exc
            raise IngestInputError(f"Unreadable table {path}: {exc}") from exc
    if encoding != fmt.encoding:
        fmt = replace(fmt, encoding=encoding)
    if table.num_rows == 0:
        raise IngestInputError(
            f"Empty table: {path} has a header but no rows; expected at least one row."
        )
    return table.rename_columns(list(columns)), fmt


def _csv(path: Path, fmt: FileFormat, encoding: str, newlines: bool, types: dict) -> pa.Table:
    stream = pa.input_stream(str(path), compression=fmt.compression)
    return pacsv.read_csv(
        stream,
        read_options=pacsv.ReadOptions(encoding=encoding, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter, newlines_in_values=newlines),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(types),
            column_types=types,
            null_values=NULL_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def arrow_to_frame(
    holder: list[pa.Table], columns: dict[str, str], path: Path, normalise: dict | None = None
) -> pd.DataFrame:
    """Arrow columns -> the typed pandas columns of ``read_table``.

    The table comes in a one-item list that this function empties, so that it holds the only
    reference (a caller's argument would keep the whole table alive): each Arrow column is freed
    as soon as it is converted, and the two copies never coexist for the whole table.
    """
    table = holder.pop()
    out: dict[str, pd.Series] = {}
    for col, kind in columns.items():
        arr = table.column(col)
        table = table.drop_columns([col])
        out[col] = _coerce(arr, kind, path, col, (normalise or {}).get(col))
        del arr
    return pd.DataFrame(out, copy=False)


def _categories_of(arr: pa.ChunkedArray) -> pd.Series:
    """A text column as a pandas categorical (the chunks' dictionaries unified)."""
    if not pa.types.is_dictionary(arr.type):
        arr = arr.cast(pa.string()).dictionary_encode()
    return arr.to_pandas()


def _coerce(arr: pa.ChunkedArray, kind: str, path: Path, col: str, normalise=None) -> pd.Series:
    if kind in ("code", "str"):
        return clean_categorical(_categories_of(arr), normalise)
    if kind == "id" and pa.types.is_integer(arr.type):
        return arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    if kind in ("id", "int", "float"):
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            out = arr.to_pandas().astype("float64")
        else:
            cat = _categories_of(arr)
            text = pd.Series(cat.cat.categories, dtype="string").str.strip()
            parsed = pd.to_numeric(text, errors="coerce")
            bad = parsed.isna() & text.notna() & (text != "")
            if bad.any():
                n_bad = int(np.isin(cat.cat.codes, np.flatnonzero(bad.to_numpy())).sum())
                raise IngestInputError(
                    f"Wrong type in column {col!r} of {path}: expected numbers, found e.g. "
                    f"{text[bad].iloc[0]!r} ({n_bad} bad values)."
                )
            out = _take(parsed.to_numpy(dtype="float64"), cat.cat.codes.to_numpy())
        if kind == "id":
            frac = np.mod(out.to_numpy(), 1)
            bad_id = ~np.isnan(frac) & (frac != 0)
            if bad_id.any():
                raise IngestInputError(
                    f"Wrong type in column {col!r} of {path}: expected integer ids, found "
                    f"{out[bad_id].iloc[0]!r}."
                )
            return out.astype("Int64")
        return out
    if kind == "date":
        if pa.types.is_timestamp(arr.type):
            return arr.to_pandas().astype("datetime64[s]")
        cat = _categories_of(arr)
        text = pd.Series(cat.cat.categories, dtype="string").str.strip()
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        bad = parsed.isna() & text.notna() & (text != "")
        if bad.any():
            n_bad = int(np.isin(cat.cat.codes, np.flatnonzero(bad.to_numpy())).sum())
            raise IngestInputError(
                f"Wrong type in column {col!r} of {path}: expected dates like "
                f"'2164-10-23 21:09:00', found e.g. {text[bad].iloc[0]!r} ({n_bad} bad values)."
            )
        values = parsed.to_numpy(dtype="datetime64[s]")
        codes = cat.cat.codes.to_numpy()
        res = np.where(codes >= 0, values[np.maximum(codes, 0)], np.datetime64("NaT"))
        return pd.Series(res.astype("datetime64[s]"))
    raise ValueError(kind)


def _take(values: np.ndarray, codes: np.ndarray) -> pd.Series:
    """values[codes] with code -1 (missing) -> NaN."""
    out = values[np.maximum(codes, 0)] if len(values) else np.full(len(codes), np.nan)
    return pd.Series(np.where(codes >= 0, out, np.nan))


def clean_categorical(s: pd.Series, normalise: Callable | None = None) -> pd.Series:
    """Strip the distinct values (and ``normalise`` them), empty = missing, categories sorted.

    Works on the categories only, so its cost does not grow with the number of rows. Values that
    become equal (' 4019', '4019') merge into one category.
    """
    if not isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype("category")
    cats = pd.Series(s.cat.categories.astype(str), dtype=object).str.strip()
    if normalise is not None:
        cats = normalise(cats)
    cats = cats.where(cats.notna() & (cats != ""), None)
    uniq = np.array(sorted(set(cats.dropna())), dtype=object)
    pos = pd.Index(uniq).get_indexer(cats)  # -1 for missing
    codes = s.cat.codes.to_numpy()
    new = np.where(codes >= 0, pos[np.maximum(codes, 0)] if len(pos) else -1, -1)
    return pd.Series(pd.Categorical.from_codes(new.astype(np.int32), categories=uniq))


def remove_dots(codes: pd.Series) -> pd.Series:
    """ICD codes as MIMIC writes them: no dot ('401.9' -> '4019', 'V10.3' -> 'V103')."""
    return codes.str.replace(".", "", regex=False)


_NDC_SCIENTIFIC = re.compile(r"^\d+(\.\d+)?[eE][+-]?\d+$")
_NDC_FLOAT = re.compile(r"^(\d+)\.0+$")
_NDC_HYPHENATED = re.compile(r"^(\d{1,5})-(\d{1,4})-(\d{1,2})$")


def normalise_ndc(ndc: pd.Series, where: str | None = None) -> pd.Series:
    """NDCs as MIMIC writes them: 11 digits, leading zeros kept.

    '0338-0586-26' (any hyphenated 5-4-2 form) -> '00338058626' (each part padded);
    '338058626.0' (written as a number) -> '00338058626'; '338058626' (leading zeros lost, as a
    spreadsheet does) -> '00338058626'. An NDC in scientific notation ('3.38059E+8') has lost its
    digits: with ``where`` (the file and column) it stops the ingest; without it stays as it is
    and maps to nothing.
    """
    ndc = ndc.astype(object)
    text = ndc.dropna().astype(str)
    sci = text[text.str.match(_NDC_SCIENTIFIC)]
    if where is not None and len(sci):
        raise IngestInputError(
            f"NDC in scientific notation in {where}: e.g. {sci.iloc[0]!r} (distinct values: "
            f"{len(sci)}); the digits of these codes are lost (a spreadsheet saved the column as "
            "a number). Export the column as text: NDCs are 11-digit strings with leading zeros."
        )
    hyph = text.str.extract(_NDC_HYPHENATED)
    is_hyph = hyph[0].notna()
    text = text.where(~is_hyph, hyph[0].str.zfill(5) + hyph[1].str.zfill(4) + hyph[2].str.zfill(2))
    text = text.str.replace(_NDC_FLOAT, r"\1", regex=True)
    text = text.str.replace("-", "", regex=False)
    short = text.str.fullmatch(r"\d{1,10}")
    text = text.where(~short, text.str.zfill(11))
    out = ndc.copy()
    out[text.index] = text
    return out


@dataclass
class RawTables:
    """What ``read_raw_tables`` returns: the standard tables, the rows read per file, the format
    of each file, and the rows dropped while reading (by file and reason)."""

    tables: dict[str, pd.DataFrame]
    rows_read: dict[str, int]
    formats: dict[str, dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)


def read_raw_tables(paths: dict[str, str], source: str) -> RawTables:
    """Read every raw table into the standard shape (see the module docstring)."""
    specs = table_specs(source)
    raw: dict[str, pd.DataFrame] = {}
    formats: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    mimic4 = _reader_source(source) == "mimic4"
    code_col = "icd_code" if mimic4 else "icd9_code"
    for name, (stem, columns) in specs.items():
        path = Path(paths[name])
        normalise: dict[str, Callable] = {}
        if code_col in columns:
            normalise[code_col] = remove_dots
        if "ndc" in columns:
            normalise["ndc"] = lambda s, where=f"column 'ndc' of {path}": normalise_ndc(s, where)
        table, fmt = read_arrow(path, columns)
        formats[stem.upper()] = fmt.describe()
        if fmt.encoding != "utf-8" or fmt.delimiter != "," or fmt.bom:
            logger.warning("%s: read as %s", path, fmt.describe())
        holder = [table]
        del table
        raw[name] = arrow_to_frame(holder, columns, path, normalise)
    rows_read = {specs[name][0]: int(len(df)) for name, df in raw.items()}
    if mimic4:
        raw["admissions"] = raw["admissions"].rename(columns={"race": "ethnicity"})
        for name in ("diagnoses", "procedures", "d_diagnoses", "d_procedures"):
            raw[name], n_missing = _versioned(raw[name], Path(paths[name]))
            dropped[f"{specs[name][0].upper()}:icd_version_missing"] = n_missing
        for name in ("d_diagnoses", "d_procedures"):
            raw[name] = raw[name].rename(columns={"long_title": "title"})
    else:
        for name in ("diagnoses", "procedures", "d_diagnoses", "d_procedures"):
            raw[name] = raw[name].rename(columns={"icd9_code": "code"})
    return RawTables(raw, rows_read, formats, dropped)


ICD_VERSIONS = ("9", "10")


def _versioned(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """MIMIC-IV mixes ICD-9 and ICD-10: ``code = f"{icd_version}_{icd_code}"`` (docs/contracts.md).

    A row with a code and no version is dropped and counted (the same string can be an ICD-9 and
    an ICD-10 code: '4019' vs '10_4019' cannot be told apart); a version other than 9 or 10 stops
    with the column named. Returns (table, rows dropped).
    """
    version = clean_categorical(df["icd_version"], lambda v: v.str.replace(r"\.0$", "", regex=True))
    other = [v for v in version.cat.categories if v not in ICD_VERSIONS]
    if other:
        raise IngestInputError(
            f"Wrong value in column 'icd_version' of {path}: expected 9 or 10, found e.g. "
            f"{other[0]!r}."
        )
    code = df["icd_code"]
    vc, cc = version.cat.codes.to_numpy(np.int64), code.cat.codes.to_numpy(np.int64)
    n_code = len(code.cat.categories) + 1
    key = np.where((vc >= 0) & (cc >= 0), vc * n_code + cc, -1)
    uniq, inv = np.unique(key, return_inverse=True)
    valid = uniq >= 0
    vers = np.asarray(version.cat.categories, dtype=object)[uniq[valid] // n_code]
    base = np.asarray(code.cat.categories, dtype=object)[uniq[valid] % n_code]
    pos = np.full(len(uniq), -1, dtype=np.int64)
    pos[valid] = np.arange(int(valid.sum()))
    labels = pd.Index(vers + "_" + base, dtype=object)
    combined = clean_categorical(
        pd.Series(pd.Categorical.from_codes(pos[inv].astype(np.int32), categories=labels))
    )
    no_version = (vc < 0) & (cc >= 0)
    out = df.drop(columns=["icd_code", "icd_version"])
    out.insert(len(out.columns) - (1 if "long_title" in out.columns else 0), "code", combined)
    return out[~no_version].reset_index(drop=True), int(no_version.sum())


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


def _read_text(path: Path) -> str:
    """A small text file: UTF-8 (a byte-order mark skipped), else latin-1."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        logger.warning("%s is not UTF-8: read as latin-1", path)
        return data.decode("latin-1")


def read_ndc2rxnorm(path: str | Path) -> pd.DataFrame:
    """GAMENet ``ndc2rxnorm_mapping.txt``: a Python dict literal, parsed with ``ast.literal_eval``."""
    path = Path(path)
    text = _read_text(path).strip()
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
    df["ndc"], df["rxcui"] = normalise_ndc(df["ndc"].str.strip()), df["rxcui"].str.strip()
    df["ndc"] = df["ndc"].astype("string")
    df = df[df["rxcui"].notna() & (df["rxcui"] != "")]
    if df.empty:
        raise IngestInputError(f"Empty table: {path} holds no NDC->RXCUI pairs.")
    return df.reset_index(drop=True)


def _read_aux_csv(path: Path, columns: list[str], what: str, header: bool = True) -> pd.DataFrame:
    """A small aux CSV: format sniffed like the raw tables (gzip, UTF-8/BOM/latin-1, delimiter)."""
    fmt = sniff_format(path, columns)
    kwargs: dict[str, Any] = {
        "dtype": "string",
        "sep": fmt.delimiter,
        "compression": "gzip" if fmt.compression else None,
    }
    try:
        try:
            df = pd.read_csv(
                path, encoding="utf-8-sig" if fmt.encoding == "utf-8" else "latin-1", **kwargs
            )
        except UnicodeDecodeError:  # not UTF-8 past the first 64 KiB
            df = pd.read_csv(path, encoding="latin-1", **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise IngestInputError(f"Empty table: {path} ({what}) is empty.") from exc
    except pd.errors.ParserError as exc:
        raise IngestInputError(f"Malformed CSV: {path} ({what}): {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from exc
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
    header = [
        c.strip().lower() for c in sniff_format(path, ["ndc", "ndc11", "atc3", "atc4"]).header
    ]
    ndc_col = "ndc11" if "ndc11" in header and "ndc" not in header else "ndc"
    atc_col = "atc4" if "atc4" in header and "atc3" not in header else "atc3"
    df = _read_aux_csv(path, [ndc_col, atc_col], "NDC->ATC3 table")
    df = df.rename(columns={ndc_col: "ndc", atc_col: "atc3"})
    df["ndc"] = normalise_ndc(df["ndc"]).astype("string")
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
    for line in csv.reader(_read_text(path).splitlines()):
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
