"""The embedded synthetic cohort in the MIMIC-III schema: the generator and its knowledge table."""
