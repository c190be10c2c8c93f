"""Thin nodes of the features stage: unpack params, call ``leader_kedro.teacher.features``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from leader_kedro import tracking
from leader_kedro.contracts import FEATURES_COMMAND
from leader_kedro.teacher import features


def extract(
    teacher_model: Any,
    teacher_card: dict,
    prompts: pd.DataFrame,
    params: dict[str, Any],
    split: str,
) -> dict[str, Any]:
    """Teacher features of one split, or an empty (skipped) cache when the split is switched off."""
    cfg = features.features_config(params)
    splits = list(cfg.splits)
    if split not in splits:
        return features.skipped_features(
            teacher_card, prompts, split, f"params:features.splits = {splits} excludes '{split}'"
        )
    out = features.extract_features(
        teacher_model,
        teacher_card,
        prompts,
        batch_size=cfg.batch_size,
        split=split,
        sort_by_length=cfg.sort_by_length,
        progress=cfg.progress,
        distributed=cfg.distributed,
    )
    meta = out["metadata"]
    tracking.log_metrics(
        {
            f"features_{split}_seconds": meta["extraction_seconds"],
            f"features_{split}_samples": len(out["sample_ids"]),
        }
    )
    return out


def extract_train(teacher_model, teacher_card, prompts_train, params):
    """Train features, carrying their own per-dimension mean/std (the standardisation)."""
    out = extract(teacher_model, teacher_card, prompts_train, params, "train")
    if out["metadata"].get("skipped"):
        return out
    stats = features.standardisation_stats(out["hidden"], "train")
    return features.with_standardisation(out, stats, teacher_card, prompts_train)


def _with_train_stats(out, train_features, teacher_card, prompts):
    stats = features.train_stats_of(train_features)
    reason = None if stats else "teacher_features_train has none (train extraction switched off)"
    return features.with_standardisation(out, stats, teacher_card, prompts, reason)


def extract_val(teacher_model, teacher_card, prompts_val, params, teacher_features_train):
    """Val features, carrying the TRAIN statistics (never their own)."""
    out = extract(teacher_model, teacher_card, prompts_val, params, "val")
    return _with_train_stats(out, teacher_features_train, teacher_card, prompts_val)


def extract_test(teacher_model, teacher_card, prompts_test, params, teacher_features_train):
    """Test features, carrying the TRAIN statistics (never their own)."""
    out = extract(teacher_model, teacher_card, prompts_test, params, "test")
    return _with_train_stats(out, teacher_features_train, teacher_card, prompts_test)


def report_features(
    train: dict[str, Any], val: dict[str, Any], test: dict[str, Any], teacher_card: dict
) -> dict[str, Any]:
    """``teacher_features_report``: provenance, timings and storage size per split."""
    report: dict[str, Any] = {
        "teacher_fingerprint": teacher_card.get("fingerprint"),
        "backbone": teacher_card.get("backbone"),
        "refresh_command": FEATURES_COMMAND,
        "splits": {},
    }
    for split, feats in (("train", train), ("val", val), ("test", test)):
        meta = feats["metadata"]
        entry = {
            "fingerprint": feats["fingerprint"],
            "skipped": bool(meta.get("skipped", False)),
            **features.storage_report(feats),
        }
        stats = meta.get("standardisation")
        if stats:
            entry["standardisation"] = {
                "source_split": stats.get("source_split"),
                "n": stats.get("n"),
                "sha256": stats.get("sha256"),
                "n_floored": stats.get("n_floored"),
                **(stats.get("summary") or {}),
            }
        for key in (
            "extraction_seconds",
            "processes",
            "batch_size",
            "padding_share",
            "float16_max_abs_error",
            "created_at",
        ):
            if key in meta:
                entry[key] = meta[key]
        if meta.get("extraction_seconds") and entry["samples"]:
            entry["samples_per_second"] = round(entry["samples"] / meta["extraction_seconds"], 2)
        report["splits"][split] = entry
    tracking.log_dict(report, "features/teacher_features_report.json")
    train_entry = report["splits"]["train"]
    tracking.log_metrics(
        {
            "features_bytes_per_sample": train_entry["bytes_per_sample_float16"],
            "features_json_bytes_per_sample": train_entry.get("bytes_per_sample_json_floats"),
        }
    )
    return report
