"""Thin nodes of the prompts stage: unpack params, call ``leader_kedro.teacher.prompts``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from leader_kedro import tracking
from leader_kedro.teacher import prompts as prompting

SPLITS = ("train", "val", "test")


def make_prompts(
    samples: pd.DataFrame,
    code_names: dict,
    params: dict[str, Any],
    teacher_backbone: str | None,
    teacher_max_length: int | None,
    split: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Prompts of one split (same row order as ``samples_{split}``) and its build statistics."""
    cfg = prompting.PromptConfig.from_params(params)
    tokenizer_name, max_length = prompting.resolve_settings(
        cfg, teacher_backbone, teacher_max_length
    )
    out, stats = prompting.build_prompts(
        samples,
        code_names,
        prompting.get_tokenizer(tokenizer_name),
        max_length=max_length,
        config=cfg,
        reserve_tokens=cfg.reserve_tokens,
        split=f"samples_{split}",
    )
    stats["tokenizer"], stats["max_length"] = tokenizer_name, max_length
    return out, stats


def make_prompts_train(samples, code_names, params, teacher_backbone, teacher_max_length):
    return make_prompts(samples, code_names, params, teacher_backbone, teacher_max_length, "train")


def make_prompts_val(samples, code_names, params, teacher_backbone, teacher_max_length):
    return make_prompts(samples, code_names, params, teacher_backbone, teacher_max_length, "val")


def make_prompts_test(samples, code_names, params, teacher_backbone, teacher_max_length):
    return make_prompts(samples, code_names, params, teacher_backbone, teacher_max_length, "test")


def report_prompt_lengths(
    prompts_train: pd.DataFrame,
    prompts_val: pd.DataFrame,
    prompts_test: pd.DataFrame,
    stats_train: dict,
    stats_val: dict,
    stats_test: dict,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The ``prompt_length_report`` (also logged to MLflow when a run is open)."""
    cfg = prompting.PromptConfig.from_params(params)
    settings = {k: getattr(cfg, k) for k in ("reserve_tokens", "history_visits", "profile")}
    settings["tokenizer"] = stats_train.get("tokenizer", cfg.tokenizer)
    settings["max_length"] = stats_train.get("max_length", cfg.max_length)
    stats = [
        {k: v for k, v in s.items() if k not in ("tokenizer", "max_length")}
        for s in (stats_train, stats_val, stats_test)
    ]
    report = prompting.length_report(
        {"train": prompts_train, "val": prompts_val, "test": prompts_test},
        dict(zip(SPLITS, stats, strict=True)),
        settings,
    )
    tracking.log_dict(report, "prompts/prompt_length_report.json")
    tracking.log_metrics(prompting.flat_metrics(report))
    return report
