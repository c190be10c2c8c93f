"""Distill stage: train LEADER(S) from the cached teacher features, predict, evaluate, register."""

from leader_kedro.pipelines.distill.pipeline import create_pipeline

__all__ = ["create_pipeline"]
