"""Readers: file formats (gzip by content, BOM, latin-1, delimiter), NDC and code cleaning, the
stage meter and the ingest benchmark through Kedro."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from leader_kedro.contracts import IngestInputError
from leader_kedro.ingest.meter import StageMeter, stage_table
from leader_kedro.ingest.readers import (
    clean_categorical,
    normalise_ndc,
    read_table,
    sniff_format,
)

COLUMNS = {"subject_id": "id", "hadm_id": "id", "seq_num": "int", "icd9_code": "code"}
ROWS = "SUBJECT_ID{d}HADM_ID{d}SEQ_NUM{d}ICD9_CODE\n1{d}11{d}1{d}4019\n1{d}11{d}2{d} 25000 \n"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("gz", [False, True])
def test_format_is_read_from_the_content(tmp_path, delimiter, gz):
    data = ROWS.format(d=delimiter).encode()
    path = tmp_path / "DIAGNOSES_ICD.csv"  # the name never says gzip: the magic bytes do
    path.write_bytes(gzip.compress(data) if gz else data)
    fmt = sniff_format(path, list(COLUMNS))
    assert (fmt.delimiter, fmt.compression) == (delimiter, "gzip" if gz else None)
    df = read_table(path, COLUMNS)
    assert df["icd9_code"].astype(str).tolist() == ["4019", "25000"]
    assert df["hadm_id"].dtype == "Int64" and df["seq_num"].dtype == "float64"


def test_bom_and_latin1(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + ROWS.format(d=",").encode())
    assert sniff_format(bom, list(COLUMNS)).describe()["encoding"] == "utf-8-sig"
    assert len(read_table(bom, COLUMNS)) == 2
    lat = tmp_path / "lat.csv"
    lat.write_bytes("subject_id,language\n1,ESPAÑOL\n".encode("latin-1"))
    df = read_table(lat, {"subject_id": "id", "language": "str"})
    assert df["language"].astype(str).tolist() == ["ESPAÑOL"]


def test_damaged_gzip_names_the_file(tmp_path):
    path = tmp_path / "x.csv.gz"
    data = gzip.compress(ROWS.format(d=",").encode() * 2000)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        IngestInputError, match=r"Damaged file: .*x\.csv\.gz cannot be decompressed"
    ):
        read_table(path, COLUMNS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00338058626", "00338058626"),
        ("338058626", "00338058626"),  # leading zeros lost
        ("338058626.0", "00338058626"),  # written as a number
        ("00338-0586-26", "00338058626"),  # 5-4-2
        ("0338-0586-26", "00338058626"),  # 4-4-2: the labeler part padded
        ("12345-678-90", "12345067890"),  # 5-3-2: the product part padded
        ("12345-6789-1", "12345678901"),  # 5-4-1
        ("0", "00000000000"),  # still all zeros: dropped as "no NDC"
        ("3.38059E+8", "3.38059E+8"),  # without a place to name: left as it is (maps to nothing)
    ],
)
def test_normalise_ndc(raw, expected):
    assert normalise_ndc(pd.Series([raw])).iloc[0] == expected


def test_ndc_in_scientific_notation_is_refused():
    with pytest.raises(IngestInputError, match=r"scientific notation in column 'ndc' of X"):
        normalise_ndc(pd.Series(["3.38059E+08", "00338058626"]), "column 'ndc' of X")


def test_clean_categorical_merges_values_that_clean_to_the_same():
    s = clean_categorical(
        pd.Series([" 401.9", "4019", "", None, "V10.3"]), lambda c: c.str.replace(".", "")
    )
    assert s.astype(object).where(s.notna(), None).tolist() == ["4019", "4019", None, None, "V103"]
    assert list(s.cat.categories) == ["4019", "V103"]  # sorted: code order = lexicographic order


def test_stage_meter_records_wall_and_peak(caplog):
    meter = StageMeter()
    with caplog.at_level(logging.INFO, logger="leader_kedro.ingest.meter"):
        with meter.stage("alloc"):
            block = np.ones(40_000_000)  # 320 MB, touched
            del block
    (row,) = meter.stages
    assert row["stage"] == "alloc" and row["wall_s"] >= 0
    assert row["peak_gib"] >= 0.25  # the block was resident at some point
    assert caplog.records[-1].ingest_stage == row
    assert "alloc" in stage_table(meter.stages)


def test_ingest_benchmark_through_kedro(tmp_path, monkeypatch):
    """The Kedro path of `python -m leader_kedro.bench ingest --kedro`: the ingest pipeline in a
    project copy, every stage timed (node stages and the catalog's writes and loads)."""
    from leader_kedro.pipelines.ingest.benchmark import make_project_copy, run_kedro_ingest

    monkeypatch.chdir(tmp_path)
    project = make_project_copy(tmp_path / "project")
    (project / "conf" / "local" / "mlflow.yml").write_text(
        "tracking:\n  disable_tracking:\n    pipelines: [ingest]\n"
    )
    out = run_kedro_ingest(project, 150)
    stages = [r["stage"] for r in out["stages"]]
    assert stages == ["generate", "read", "map", "visits", "vocab", "split", "samples", "oracle"]
    assert {r["stage"] for r in out["io_totals"]} == {"write", "load"}
    assert any(r["dataset"] == "visits" for r in out["io"] if r["kind"] == "write")
    assert out["cohort"]["patients"] > 100
