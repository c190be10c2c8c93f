"""Thin nodes of the score pipeline: read + check the records, score the good ones, report."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def read_patient_records(params: dict) -> dict[str, Any]:
    """The records of ``score.input``, split into scorable ones and rejected lines (with reasons)."""
    from leader_kedro.student import scoring

    cfg = scoring.score_config(params)
    parsed, unreadable = scoring.read_records(cfg.input)
    good, invalid = scoring.validate_records(parsed, cfg.id_field)
    rejected = sorted(unreadable + invalid, key=lambda r: r["line"])
    for item in rejected[:20]:
        logger.warning("%s line %d rejected: %s", cfg.input, item["line"], item["reason"])
    if len(rejected) > 20:
        logger.warning("... and %d more rejected lines (score_report.json)", len(rejected) - 20)
    return {
        "n_records": len(parsed) + len(unreadable),
        "good": good,
        "rejected": rejected,
    }


def score_patients(model, patient_records: dict, params: dict) -> tuple[pd.DataFrame, dict]:
    """Recommendations (one row per record and class) and the scoring report."""
    from leader_kedro.student import scoring

    cfg = scoring.score_config(params)
    good, rejected = patient_records["good"], patient_records["rejected"]
    answers = scoring.score_records(model, good, cfg)
    table = scoring.recommendations_table(good, answers)
    report = scoring.scoring_report(
        cfg, patient_records["n_records"], good, rejected, answers, scoring.model_info(model)
    )
    return table, report
