"""Ingest: raw MIMIC-III / MIMIC-IV (or the synthetic cohort) -> visits, vocab, DDI, samples, splits."""

from leader_kedro.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
