"""Custom Kedro datasets, only where kedro-datasets has none."""

from leader_kedro.datasets.features_dataset import TeacherFeaturesDataset

__all__ = ["TeacherFeaturesDataset"]
