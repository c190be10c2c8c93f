"""The default synthetic cohort stays within ±25% of the MIMIC-III demo on every banded statistic."""

from __future__ import annotations

import pandas as pd
import pytest

from leader_kedro.synthetic import calibration as C


@pytest.fixture(scope="module")
def rows(shared_data, tmp_path_factory):
    demo = C.measure_demo(shared_data / "mimic3_demo", shared_data / "aux", seed=42)
    synthetic = C.measure_synthetic(seed=42, workdir=tmp_path_factory.mktemp("calibration"))
    return C.calibration_rows(demo, synthetic)


def test_calibration_stays_within_its_bands(rows):
    table = C.format_table(rows)
    assert [r.statistic for r in rows if not r.within] == [], table
    assert sum(r.banded for r in rows) == len(C.LABELS) >= 20


def test_demo_side_is_the_project_ingest_of_the_demo(rows):
    demo = {r.statistic: r.demo for r in rows}
    # docs/ingest.md: 107 visits of 82 patients, 14.24 / 4.27 / 19.23 codes per visit
    assert demo["visits_per_patient"] == pytest.approx(107 / 82, abs=1e-3)
    assert demo["diagnoses_per_visit"] == pytest.approx(14.24, abs=0.01)
    assert demo["medications_per_visit"] == pytest.approx(19.23, abs=0.01)


def test_long_tail_holds_a_fifth_of_the_test_visits(rows):
    synthetic = {r.statistic: r.synthetic for r in rows}
    assert synthetic["rare_dx_test_share"] >= 0.2


def test_medication_continuation_definition():
    visits = pd.DataFrame(
        {
            "subject_id": [1, 1, 1, 2, 2],
            "visit_index": [0, 1, 2, 0, 1],
            "medications": [["A"], ["A", "B"], ["B", "C", "D", "E"], ["A"], ["B"]],
        }
    )
    # visit 1: 1/2 in the previous visit; visit 2: 1/4; patient 2's second visit: 0/1
    assert C.medication_continuation(visits) == pytest.approx((0.5 + 0.25 + 0.0) / 3)


def test_cli_prints_the_side_by_side_table(shared_data, capsys):
    code = C.main(
        [
            "--demo-dir",
            str(shared_data / "mimic3_demo"),
            "--aux-dir",
            str(shared_data / "aux"),
            "--patients",
            "300",
        ]
    )
    out = capsys.readouterr().out
    assert "| statistic | MIMIC-III demo | synthetic (default) |" in out and code in (0, 1)
