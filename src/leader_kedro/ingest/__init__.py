"""Ingest: readers of MIMIC-III/IV and aux files (readers), visits and vocabularies (cohort), LEADER samples and the patient split (samples), the stage end to end (stage)."""
