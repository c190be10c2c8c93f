"""Evaluate stage: baselines, metrics under labelled protocols, efficiency, report."""

from leader_kedro.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
