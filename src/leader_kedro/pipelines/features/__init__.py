"""Features stage: cache the teacher's pooled hidden states (float16, fingerprinted)."""

from leader_kedro.pipelines.features.pipeline import create_pipeline

__all__ = ["create_pipeline"]
