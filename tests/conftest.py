"""Shared test setup: offline, no telemetry, and the path to the real MIMIC demos."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, read in place; tests that need it skip with the reason when absent."""
    if not (SHARED_DATA / "mimic3_demo").is_dir():
        pytest.skip(f"real MIMIC demo data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA
