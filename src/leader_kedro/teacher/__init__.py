"""LEADER(T): prompts, the backbone + LoRA + head (model), its training (training, trainer) and the hidden-state cache (features)."""
