"""LEADER(S): the ID-based student (model), its distillation training (training) and the registered MLflow model (serving)."""
