"""The default synthetic cohort against the MIMIC-III demo, side by side (docs/synthetic.md).

Both cohorts go through the project's own ingest (``ingest.stage.run_ingest``) with their own
environment's parameters (``conf/base`` for the synthetic cohort, ``conf/mimic3`` for the demo),
and the same definitions are measured on both ``visits`` tables:

- visits per patient and the share of single-visit patients;
- diagnoses, procedures and ATC-3 classes per visit;
- medication continuation: per visit with an earlier visit, the share of its classes that the
  patient's previous visit also had (mean over those visits);
- the ground-truth DDI rate (pooled over the visits, each source's own DDI pairs);
- the age at each patient's last visit (the samples' profile): mean and quartiles;
- the profile mix at each patient's last visit: the share of every value that holds at least 10%
  of the demo's patients (a smaller share of 82 patients is too noisy to band).

A statistic is within its band when it lies within ±25% (relative) of the demo's value. The share
of test samples whose current visit holds a diagnosis seen at most 5 times in train is shown beside
them, unbanded (it depends on the cohort's size).

``python -m leader_kedro.synthetic.calibration`` prints the table (exit status 1 when a statistic
is out of its band); ``tests/synthetic/test_calibration.py`` keeps it within its bands in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DEMO = ROOT.parent / "shared" / "data" / "mimic3_demo"
DEFAULT_AUX = ROOT.parent / "shared" / "data" / "aux"
BAND = 0.25

#: (field, value): the profile shares that are banded, those with >= 10% of the demo's patients
PROFILE_SHARES: tuple[tuple[str, str], ...] = (
    ("gender", "F"),
    ("insurance", "Medicare"),
    ("insurance", "Private"),
    ("language", "ENGL"),
    ("language", "unknown"),
    ("marital_status", "MARRIED"),
    ("marital_status", "SINGLE"),
    ("marital_status", "WIDOWED"),
    ("marital_status", "unknown"),
    ("ethnicity", "WHITE"),
    ("admission_type", "EMERGENCY"),
)
#: statistic -> its label in the table, in table order
LABELS: dict[str, str] = {
    "visits_per_patient": "visits per patient",
    "single_visit_share": "single-visit patients (share)",
    "diagnoses_per_visit": "diagnoses per visit",
    "procedures_per_visit": "procedures per visit",
    "medications_per_visit": "ATC-3 classes per visit",
    "medication_continuation": "medication continuation (share of a visit's classes in the previous visit)",
    "ddi_rate": "ground-truth DDI rate",
    "age_mean": "age at the last visit: mean",
    "age_q25": "age at the last visit: 25th percentile",
    "age_median": "age at the last visit: median",
    "age_q75": "age at the last visit: 75th percentile",
    **{f"{f}={v}": f"{f.replace('_', ' ')} = {v} (share of patients)" for f, v in PROFILE_SHARES},
}
UNBANDED = {
    "rare_dx_test_share": "test samples whose visit holds a diagnosis seen <= 5 times in train"
}


@dataclass(frozen=True)
class Row:
    statistic: str
    label: str
    demo: float
    synthetic: float
    banded: bool

    @property
    def relative(self) -> float:
        return (self.synthetic - self.demo) / self.demo if self.demo else float("nan")

    @property
    def within(self) -> bool:
        return not self.banded or abs(self.relative) <= BAND + 1e-12


def medication_continuation(visits: pd.DataFrame) -> float:
    """Mean, over visits with an earlier visit, of |classes ∩ previous visit's| / |classes|."""
    v = visits.sort_values(["subject_id", "visit_index"], kind="stable")
    meds = [set(m) for m in v["medications"]]
    same = v["subject_id"].to_numpy()
    shares = [
        len(meds[i] & meds[i - 1]) / len(meds[i])
        for i in range(1, len(meds))
        if same[i] == same[i - 1] and meds[i]
    ]
    return float(np.mean(shares)) if shares else float("nan")


def realism_statistics(visits: pd.DataFrame, report: Mapping[str, Any]) -> dict[str, float]:
    """The calibrated statistics of one ingested cohort (``run_ingest``'s visits and report)."""
    cohort = report["cohort"]
    last = visits.sort_values(["subject_id", "visit_index"]).groupby("subject_id").tail(1)
    age = last["age"].dropna()
    out = {
        "visits_per_patient": float(cohort["mean_visits_per_patient"]),
        "single_visit_share": float(cohort["single_visit_share"]),
        "diagnoses_per_visit": float(cohort["mean_diagnoses_per_visit"]),
        "procedures_per_visit": float(cohort["mean_procedures_per_visit"]),
        "medications_per_visit": float(cohort["mean_medications_per_visit"]),
        "medication_continuation": medication_continuation(visits),
        "ddi_rate": float(cohort["ddi_rate_ground_truth"]),
        "age_mean": float(age.mean()),
        "age_q25": float(age.quantile(0.25)),
        "age_median": float(age.median()),
        "age_q75": float(age.quantile(0.75)),
    }
    for field, value in PROFILE_SHARES:
        out[f"{field}={value}"] = float((last[field].astype(str) == value).mean())
    test = report.get("samples", {}).get("test", {})
    out["rare_dx_test_share"] = float(test.get("rare_dx_share", float("nan")))
    return out


def conf_ingest(env: str) -> dict:
    """The ``ingest`` block of ``conf/<env>`` (the split seed left to the global seed)."""
    import yaml

    path = ROOT / "conf" / env / "parameters_ingest.yml"
    ingest = yaml.safe_load(path.read_text())["ingest"]
    ingest["split"] = {**ingest.get("split", {}), "seed": None}
    return ingest


def conf_synthetic() -> dict:
    """The ``synthetic`` block of conf/base (its ``${seed}`` left to the caller)."""
    import yaml

    block = yaml.safe_load((ROOT / "conf" / "base" / "parameters_ingest.yml").read_text())
    return {k: v for k, v in block["synthetic"].items() if k != "seed"}


def measure_demo(
    demo_dir: str | Path = DEFAULT_DEMO, aux_dir: str | Path = DEFAULT_AUX, seed: int = 42
):
    """The statistics of the MIMIC-III demo, ingested with the ``mimic3`` environment."""
    from leader_kedro.ingest.stage import run_ingest

    out = run_ingest("mimic3", demo_dir, aux_dir, conf_ingest("mimic3"), seed)
    return realism_statistics(out["visits"], out["report"])


def measure_synthetic(
    n_patients: int | None = None,
    seed: int = 42,
    params: Mapping[str, Any] | None = None,
    workdir: str | Path | None = None,
):
    """The statistics of the synthetic cohort (default: conf/base's), written and ingested."""
    from leader_kedro.ingest.stage import run_ingest
    from leader_kedro.synthetic.generator import synthetic_config, write_cohort

    cfg = synthetic_config({**conf_synthetic(), **dict(params or {})})
    n = int(n_patients if n_patients is not None else cfg.n_patients)
    with tempfile.TemporaryDirectory(prefix="calibration_") as tmp:
        raw = Path(workdir or tmp) / "raw"
        write_cohort(raw, raw / "aux", n, seed, cfg)
        out = run_ingest("synthetic", raw, raw / "aux", conf_ingest("base"), seed)
    return realism_statistics(out["visits"], out["report"])


def calibration_rows(demo: Mapping[str, float], synthetic: Mapping[str, float]) -> list[Row]:
    rows = [Row(k, label, demo[k], synthetic[k], True) for k, label in LABELS.items()]
    rows += [Row(k, label, demo[k], synthetic[k], False) for k, label in UNBANDED.items()]
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The side-by-side markdown table."""
    lines = [
        "| statistic | MIMIC-III demo | synthetic (default) | relative difference | within ±25% |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        digits = 4 if max(abs(r.demo), abs(r.synthetic)) < 1 else 2
        rel = f"{100 * r.relative:+.1f}%" if r.banded else "(not banded)"
        ok = ("yes" if r.within else "**no**") if r.banded else ""
        lines.append(
            f"| {r.label} | {r.demo:.{digits}f} | {r.synthetic:.{digits}f} | {rel} | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m leader_kedro.synthetic.calibration",
        description="Print the default synthetic cohort beside the MIMIC-III demo (same ingest, same definitions).",
    )
    ap.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO)
    ap.add_argument("--aux-dir", type=Path, default=DEFAULT_AUX)
    ap.add_argument("--patients", type=int, default=None, help="default: synthetic.n_patients")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if not (args.demo_dir / "ADMISSIONS.csv").is_file():
        print(f"MIMIC-III demo not found in {args.demo_dir} (use --demo-dir)", file=sys.stderr)
        return 2
    demo = measure_demo(args.demo_dir, args.aux_dir, args.seed)
    synthetic = measure_synthetic(args.patients, args.seed)
    rows = calibration_rows(demo, synthetic)
    print(format_table(rows))
    bad = [r.statistic for r in rows if not r.within]
    print(
        f"\nwithin ±{100 * BAND:.0f}% of the demo: {'all' if not bad else 'NOT ' + ', '.join(bad)}"
    )
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
