"""Bad input stops the ingest with one clear message naming the file/column/parameter."""

import copy
from pathlib import Path

import pandas as pd
import pytest
from raw_tables import INGEST, write_aux, write_raw  # noqa: E402

from leader_kedro.contracts import IngestInputError  # noqa: E402
from leader_kedro.ingest.readers import read_ndc2rxnorm  # noqa: E402
from leader_kedro.ingest.stage import run_ingest  # noqa: E402


@pytest.fixture()
def dirs(tmp_path):
    return write_raw(tmp_path / "raw"), write_aux(tmp_path / "aux")


def run(dirs, source="mimic3", **overrides):
    ingest = {**copy.deepcopy(INGEST), **overrides}
    return run_ingest(source, dirs[0], dirs[1], ingest, seed=0)


def edit(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def test_missing_raw_file(dirs):
    (dirs[0] / "PRESCRIPTIONS.csv").unlink()
    with pytest.raises(
        IngestInputError,
        match=r"Missing file: expected PRESCRIPTIONS\.csv or PRESCRIPTIONS\.csv\.gz",
    ):
        run(dirs)


def test_missing_raw_dir(dirs, tmp_path):
    with pytest.raises(IngestInputError, match=r"Parameter `raw_dir` points to .*nowhere"):
        run((tmp_path / "nowhere", dirs[1]))


def test_missing_aux_file_names_its_parameter(dirs):
    (dirs[1] / "RXCUI2atc4.csv").unlink()
    with pytest.raises(
        IngestInputError, match=r"'RXCUI2atc4\.csv' \(parameter `ingest\.aux_files\.rxcui2atc4`\)"
    ):
        run(dirs)


def test_misnamed_column(dirs):
    edit(dirs[0] / "PRESCRIPTIONS.csv", lambda d: d.rename(columns={"NDC": "NDC_CODE"}))
    with pytest.raises(
        IngestInputError, match=r"Missing or misnamed column\(s\) \['ndc'\] in .*PRESCRIPTIONS\.csv"
    ):
        run(dirs)


def test_misnamed_aux_column(dirs):
    edit(dirs[1] / "RXCUI2atc4.csv", lambda d: d.rename(columns={"ATC4": "ATC"}))
    with pytest.raises(
        IngestInputError, match=r"\['atc4'\] in .*RXCUI2atc4\.csv \(RXCUI->ATC4 table\)"
    ):
        run(dirs)


def test_wrong_type_in_id_column(dirs):
    edit(
        dirs[0] / "DIAGNOSES_ICD.csv",
        lambda d: d.assign(HADM_ID=d["HADM_ID"].where(d.index > 0, "abc")),
    )
    with pytest.raises(
        IngestInputError,
        match=r"Wrong type in column 'hadm_id' of .*DIAGNOSES_ICD\.csv: expected numbers, found e\.g\. 'abc'",
    ):
        run(dirs)


def test_wrong_type_in_date_column(dirs):
    edit(
        dirs[0] / "ADMISSIONS.csv",
        lambda d: d.assign(ADMITTIME=d["ADMITTIME"].where(d.index > 0, "yesterday")),
    )
    with pytest.raises(
        IngestInputError,
        match=r"Wrong type in column 'admittime' of .*ADMISSIONS\.csv: expected dates",
    ):
        run(dirs)


def test_empty_table(dirs):
    edit(dirs[0] / "PROCEDURES_ICD.csv", lambda d: d.iloc[0:0])
    with pytest.raises(
        IngestInputError, match=r"Empty table: .*PROCEDURES_ICD\.csv has a header but no rows"
    ):
        run(dirs)


def test_empty_file(dirs):
    (dirs[0] / "PATIENTS.csv").write_text("")
    with pytest.raises(IngestInputError, match=r"Empty table: .*PATIENTS\.csv has no header"):
        run(dirs)


def test_no_ndc_mapped(dirs):
    (dirs[1] / "gamenet" / "ndc2rxnorm_mapping.txt").write_text("{'77777777777': u'R7'}")
    with pytest.raises(
        IngestInputError, match=r"No NDC mapped: none of the 4 distinct NDCs in PRESCRIPTIONS"
    ):
        run(dirs, mapping_routes=["rxnorm"])


def test_cohort_emptied_by_filters(dirs):
    with pytest.raises(
        IngestInputError,
        match=r"Cohort emptied by the filters: .*patient_below_min_visits.*ingest\.min_visits",
    ):
        run(dirs, min_visits=5)


def test_unknown_source(dirs):
    with pytest.raises(
        IngestInputError,
        match=r"Unknown parameter `source`: 'mimic5'; expected one of synthetic, mimic3, mimic4",
    ):
        run(dirs, source="mimic5")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "visit_order",
            "random",
            r"`ingest\.visit_order`: 'random'; expected admittime or hadm_id",
        ),
        ("min_visits", 0, r"`ingest\.min_visits`: 0; expected an integer >= 1"),
        (
            "required_code_types",
            ["diagnoses"],
            r"`ingest\.required_code_types`.*contains 'medications'",
        ),
        ("sample_protocol", "all", r"`ingest\.sample_protocol`: 'all'"),
        ("ddi_source", "drugbank", r"`ingest\.ddi_source`: 'drugbank'"),
        ("split", {"method": "by_hospital"}, r"`ingest\.split\.method`: 'by_hospital'"),
        ("split", {"ratios": [0.5, 0.1]}, r"`ingest\.split\.ratios`"),
        ("smiles_filter", True, r"`ingest\.smiles_filter`.*drugbank_drugs_info\.csv"),
    ],
)
def test_invalid_parameters(dirs, key, value, message):
    with pytest.raises(IngestInputError, match=message):
        run(dirs, **{key: value})


def test_ndc2rxnorm_is_parsed_safely_never_evaluated(tmp_path):
    path = tmp_path / "ndc2rxnorm_mapping.txt"
    path.write_text("__import__('os').system('echo pwned')")
    with pytest.raises(IngestInputError, match=r"expected a Python dict literal"):
        read_ndc2rxnorm(path)
    path.write_text("{'00000000001': u'R1', u'00000000002': '42'}")
    assert read_ndc2rxnorm(path)["rxcui"].tolist() == ["R1", "42"]
