"""Evaluation: metric definitions (metrics), protocols and groups (protocols), baselines, efficiency and the report."""
