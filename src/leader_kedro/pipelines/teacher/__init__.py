"""Teacher pipeline: fine-tune LEADER(T) (backbone + LoRA + medication head), predict val/test."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
