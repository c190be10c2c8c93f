"""Prompts stage: one LEADER text prompt per sample, with a token-length report."""

from leader_kedro.pipelines.prompts.pipeline import create_pipeline

__all__ = ["create_pipeline"]
