"""``kedro run --pipeline=score``: new patient records scored by the champion, bad lines reported.

The CLI run uses the project copy of the default flow (``tracked_flow``: its mlflow.db holds the
champion) and the shipped example with errors; the readers are also checked on parquet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from leader_kedro.student import scoring

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_score_pipeline_scores_good_records_and_reports_bad_lines(tracked_flow):
    source = EXAMPLES / "score_patients_with_errors.jsonl"
    log_file = tracked_flow / "logs/info.log"
    log_start = log_file.stat().st_size if log_file.exists() else 0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--env",
            "test",
            "--pipeline=score",
            "--params",
            f"score.input={source}",
        ],  # fmt: skip
        cwd=tracked_flow,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # the log names each bad line; read from the plain log file, as the console's Rich handler
    # wraps long lines (the input's path comes first) wherever the terminal width falls
    with log_file.open(encoding="utf8") as log:
        log.seek(log_start)
        this_run = log.read()
    assert f"{source} line 4 rejected: " in this_run

    table = pd.read_csv(tracked_flow / "data/07_model_output/score_recommendations.csv")
    report = json.loads((tracked_flow / "data/08_reporting/score_report.json").read_text())
    assert report["records"] == 8 and report["scored"] == 3 and report["rejected"] == 5
    assert sorted(table["record_id"].unique()) == ["new-001", "new-002", "new-003"]
    assert table.groupby("record_id").size().to_dict() == {
        "new-001": 10,
        "new-002": 5,
        "new-003": 10,
    }
    for _, rows in table.groupby("record_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows["probability"].is_monotonic_decreasing
        assert rows["name"].notna().all()
    reasons = {r["line"]: r["reason"] for r in report["rejected_records"]}
    assert set(reasons) == {4, 5, 6, 7, 8}
    assert "past visits only" in reasons[4]
    assert "diagnoses is empty" in reasons[5]
    assert reasons[6].startswith("age:")
    assert "weight" in reasons[7]
    assert "not valid JSON" in reasons[8]
    assert report["model"]["run_id"]
    # the report names lines and reasons, never a record's content
    assert "4019" not in json.dumps(report["rejected_records"])


def test_parquet_records_read_like_json_lines(tmp_path):
    rows = [json.loads(x) for x in (EXAMPLES / "score_patients.jsonl").read_text().splitlines()]
    pd.DataFrame(rows).to_parquet(tmp_path / "patients.parquet")
    parsed, unreadable = scoring.read_records(tmp_path / "patients.parquet")
    good, rejected = scoring.validate_records(parsed)
    assert unreadable == [] and rejected == []
    assert [g["record_id"] for g in good] == ["new-001", "new-002", "new-003"]
    assert good[1]["record"]["medications"] == [["B01A", "C07A", "C10A", "A10B"]]
    assert [g["line"] for g in good] == [1, 2, 3]


def test_an_unknown_input_format_names_the_parameter(tmp_path):
    import pytest

    from leader_kedro.contracts import ParameterError

    (tmp_path / "patients.csv").write_text("diagnoses\n")
    with pytest.raises(ParameterError, match=r"score\.input"):
        scoring.read_records(tmp_path / "patients.csv")
    with pytest.raises(ParameterError, match=r"score\.input: no file"):
        scoring.read_records(tmp_path / "missing.jsonl")


def test_without_a_champion_the_run_stops_with_one_message(tmp_path, project_copy):
    project = project_copy(tmp_path, tracking=False)  # a fresh store: no leader-student at all
    (project / "logs").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--env",
            "test",
            "--pipeline=score",
            "--params",
            f"score.input={EXAMPLES / 'score_patients.jsonl'}",
        ],  # fmt: skip
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    assert "'leader_student_champion' (models:/leader-student@champion)" in done.stderr
    assert "kedro run --pipeline=distill" in done.stderr
    assert "Traceback" not in done.stderr
