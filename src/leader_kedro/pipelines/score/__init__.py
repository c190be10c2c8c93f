"""Score pipeline: new patient records scored by the champion ``leader-student``."""

from leader_kedro.pipelines.score.pipeline import create_pipeline

__all__ = ["create_pipeline"]
