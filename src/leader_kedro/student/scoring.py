"""Batch scoring with the registered student (``kedro run --pipeline=score``), without Kedro.

Input: a file of new patient records, one :class:`~leader_kedro.student.service.PatientRecord`
per line (JSON lines, ``.jsonl``/``.json``) or per row (``.parquet``), plus an optional
identifier field (``score.id_field``, default ``id``) that is copied to the output::

    {"id": "p1", "diagnoses": [["4019", "42731"]], "procedures": [["3893"]], "medications": [],
     "gender": "F", "age": 70, "insurance": "Medicare", "admission_type": "EMERGENCY"}

Each record is checked on its own (:func:`read_records`, :func:`validate_records`): a line that
is not JSON, a field of the wrong type, an unknown field, no visit, visit lists of different
lengths... is reported with its line number and the reason, and the other records are scored.
Output: one row per (record, recommended class) with the record's line and id, and a report
(counts, every rejected line with its reason, unknown codes, DDI warnings, the model used). No
record of the input is ever copied into the report: only line numbers, ids and reasons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.contracts import ParameterError
from leader_kedro.student.service import PatientRecord, record_problems

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
OUTPUT_COLUMNS = [
    "line",
    "record_id",
    "rank",
    "atc3",
    "name",
    "probability",
    "ddi_with",
    "unknown_codes",
]


@dataclass(frozen=True)
class ScoreConfig:
    """``params:score`` (conf/base/parameters_score.yml documents every field)."""

    input: str = "examples/score_patients.jsonl"
    id_field: str = "id"
    top_k: int | None = 10
    batch_size: int = 256


def score_config(params: Mapping[str, Any] | None) -> ScoreConfig:
    from leader_kedro.config import build_config

    return build_config(ScoreConfig, params, "score")


def _plain(value: Any) -> Any:
    """Parquet values (numpy arrays, numpy scalars, NaN) as the JSON types a record has."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_records(path: str | Path) -> tuple[list[tuple[int, dict]], list[dict]]:
    """``(line, record)`` for every parsed record, and ``{line, record_id, reason}`` for every line that is
    not a JSON object. Lines are 1-based (a parquet file's row ``i`` is line ``i + 1``); blank
    lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(
            f"score.input: no file at {path}; give a JSON lines or parquet file of patient "
            "records with --params score.input=PATH (see examples/score_patients.jsonl)"
        )
    suffix = path.suffix.lower()
    records: list[tuple[int, dict]] = []
    rejected: list[dict] = []
    if suffix in PARQUET_SUFFIXES:
        frame = pd.read_parquet(path)
        for i, row in enumerate(frame.to_dict(orient="records")):
            records.append((i + 1, {k: _plain(v) for k, v in row.items() if _plain(v) is not None}))
        return records, rejected
    if suffix not in JSON_SUFFIXES:
        raise ParameterError(
            f"score.input: {path.name} is neither JSON lines ({', '.join(JSON_SUFFIXES)}) "
            f"nor parquet ({', '.join(PARQUET_SUFFIXES)})"
        )
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                rejected.append(
                    {"line": number, "record_id": None, "reason": f"not valid JSON ({exc.msg})"}
                )
                continue
            if not isinstance(value, dict):
                reason = f"a record is a JSON object, got {type(value).__name__}"
                rejected.append({"line": number, "record_id": None, "reason": reason})
                continue
            records.append((number, value))
    return records, rejected


def _pydantic_reason(exc) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "record"
        parts.append(f"{where}: {error.get('msg')}")
    return "; ".join(parts)


def validate_records(
    records: list[tuple[int, dict]], id_field: str = "id"
) -> tuple[list[dict], list[dict]]:
    """Split parsed records into scorable ones (``line``, ``record_id``, ``record``: a plain
    dict the model accepts) and rejected ones (``line``, ``record_id``, ``reason``)."""
    from pydantic import ValidationError

    good, rejected = [], []
    for line, raw in records:
        data = dict(raw)
        record_id = data.pop(id_field, None)
        record_id = None if record_id is None else str(record_id)
        top_k = data.get("top_k")
        if isinstance(top_k, float) and top_k.is_integer():  # parquet: an int column with gaps
            data["top_k"] = int(top_k)
        try:
            # strict, like the model's own check: "70" is not an age, 4019 is not a code
            record = PatientRecord.model_validate(data, strict=True)
        except ValidationError as exc:
            rejected.append({"line": line, "record_id": record_id, "reason": _pydantic_reason(exc)})
            continue
        problems = record_problems(record)
        if problems:
            rejected.append({"line": line, "record_id": record_id, "reason": "; ".join(problems)})
            continue
        good.append({"line": line, "record_id": record_id, "record": data})
    return good, rejected


def _as_dict(answer: Any) -> dict:
    return answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)


def score_records(model, good: list[dict], cfg: ScoreConfig) -> list[dict]:
    """The model's answers (plain dicts), one per good record, in order; ``cfg.top_k`` is the
    default for records without their own ``top_k``."""
    answers: list[dict] = []
    for start in range(0, len(good), cfg.batch_size):
        batch = []
        for item in good[start : start + cfg.batch_size]:
            record = dict(item["record"])
            if record.get("top_k") is None and cfg.top_k is not None:
                record["top_k"] = cfg.top_k
            batch.append(record)
        answers.extend(_as_dict(a) for a in model.predict(batch))
    return answers


def recommendations_table(good: list[dict], answers: list[dict]) -> pd.DataFrame:
    """One row per (record, recommended class): the record's line and id, rank, ATC-3 class,
    name, probability, the other recommended classes it interacts with (``;``-joined) and the
    record's count of unknown codes."""
    rows = []
    for item, answer in zip(good, answers, strict=True):
        partners: dict[str, list[str]] = {}
        for w in answer["ddi_warnings"]:
            partners.setdefault(w["atc3_a"], []).append(w["atc3_b"])
            partners.setdefault(w["atc3_b"], []).append(w["atc3_a"])
        unknown = answer["unknown_codes"]
        n_unknown = unknown["diagnoses"] + unknown["procedures"] + unknown["medications"]
        for rec in answer["recommendations"]:
            rows.append(
                {
                    "line": item["line"],
                    "record_id": item["record_id"],
                    "rank": rec["rank"],
                    "atc3": rec["atc3"],
                    "name": rec["name"],
                    "probability": rec["probability"],
                    "ddi_with": ";".join(partners.get(rec["atc3"], [])),
                    "unknown_codes": n_unknown,
                }
            )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def scoring_report(
    cfg: ScoreConfig,
    n_records: int,
    good: list[dict],
    rejected: list[dict],
    answers: list[dict],
    model_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts, every rejected line with its reason, unknown codes and DDI warnings in total."""
    unknown = {"diagnoses": 0, "procedures": 0, "medications": 0}
    profile_fields: dict[str, int] = {}
    n_ddi = 0
    for answer in answers:
        for kind in unknown:
            unknown[kind] += int(answer["unknown_codes"][kind])
        for field in answer["unknown_codes"]["profile_fields"]:
            profile_fields[field] = profile_fields.get(field, 0) + 1
        n_ddi += bool(answer["ddi_warnings"])
    return {
        "input": str(cfg.input),
        "records": n_records,
        "scored": len(good),
        "rejected": len(rejected),
        "rejected_records": sorted(rejected, key=lambda r: r["line"]),
        "unknown_codes": unknown,
        "unknown_profile_values": profile_fields,
        "records_with_ddi_warnings": n_ddi,
        "ddi_warnings": sum(len(a["ddi_warnings"]) for a in answers),
        "top_k": cfg.top_k,
        "model": dict(model_info or {}),
    }


def model_info(model) -> dict[str, Any]:
    """Which model scored: its run and model ids (from the loaded pyfunc's metadata)."""
    meta = getattr(model, "metadata", None)
    return {
        "run_id": getattr(meta, "run_id", None),
        "model_id": getattr(meta, "model_id", None) or getattr(meta, "model_uuid", None),
    }
