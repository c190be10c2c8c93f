"""Visits -> samples (LEADER protocol or every visit) and the split by patient (docs/contracts.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from leader_kedro.contracts import (
    CODE_TYPES,
    PROFILE_FIELDS,
    IngestInputError,
    diagnosis_counts,
    rare_diagnosis_mask,
)

PROTOCOLS = ("last_visit", "every_visit")
SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = [
    "sample_id",
    "subject_id",
    "hadm_id",
    "n_past",
    "diagnoses",
    "procedures",
    "medications",
    "target",
    "age",
    *PROFILE_FIELDS,
]


def split_patients(
    subject_ids, method: str = "random", ratios=(0.8, 0.1, 0.1), seed: int = 42
) -> pd.DataFrame:
    """Patients -> train/val/test. ``random``: seeded shuffle; ``sequential``: subject-id order (LEADER)."""
    if method not in ("random", "sequential"):
        raise IngestInputError(
            f"Invalid parameter `ingest.split.method`: {method!r}; expected random or sequential."
        )
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise IngestInputError(
            f"Invalid parameter `ingest.split.ratios`: {ratios}; expected three non-negative numbers summing to 1 (train, val, test)."
        )
    ids = np.sort(pd.unique(np.asarray(subject_ids, dtype=np.int64)))
    if method == "random":
        ids = np.random.default_rng(seed).permutation(ids)
    n = len(ids)
    n_train = int(np.floor(ratios[0] * n + 1e-9))
    n_val = int(np.floor(ratios[1] * n + 1e-9))
    labels = np.array(
        ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val), dtype=object
    )
    out = pd.DataFrame({"subject_id": ids, "split": labels})
    return out.sort_values("subject_id", kind="stable").reset_index(drop=True)


def _as_list(x) -> list:
    """A visit's codes as a list of str (in memory: lists; loaded from parquet: numpy arrays)."""
    if x is None:
        return []
    if isinstance(x, list):
        return x
    return x.tolist() if isinstance(x, np.ndarray) else list(x)


def make_samples(visits: pd.DataFrame, protocol: str = "last_visit") -> pd.DataFrame:
    """One row per target visit with its full chronological history (current visit last)."""
    if protocol not in PROTOCOLS:
        raise IngestInputError(
            f"Invalid parameter `ingest.sample_protocol`: {protocol!r}; expected one of {PROTOCOLS}."
        )
    v = visits.sort_values(["subject_id", "visit_index"], kind="stable").reset_index(drop=True)
    if v.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SAMPLE_COLUMNS})
    codes = {c: [_as_list(x) for x in v[c]] for c in CODE_TYPES}
    subj = v["subject_id"].to_numpy()
    starts = np.r_[0, np.flatnonzero(subj[1:] != subj[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(v)]))  # row -> first row of its patient
    if protocol == "last_visit":
        targets = np.r_[starts[1:] - 1, len(v) - 1]
    else:
        targets = np.arange(len(v))
    t = v.iloc[targets].reset_index(drop=True)
    f = first[targets]
    out = pd.DataFrame(
        {
            "sample_id": t["subject_id"].astype(str) + "_" + t["hadm_id"].astype(str),
            "subject_id": t["subject_id"].astype("int64"),
            "hadm_id": t["hadm_id"].astype("int64"),
            "n_past": (targets - f).astype("int64"),
            "diagnoses": [codes["diagnoses"][a : b + 1] for a, b in zip(f, targets, strict=True)],
            "procedures": [codes["procedures"][a : b + 1] for a, b in zip(f, targets, strict=True)],
            "medications": [codes["medications"][a:b] for a, b in zip(f, targets, strict=True)],
            "target": [codes["medications"][b] for b in targets],
            "age": t["age"].astype("float64"),
        }
    )
    for col in PROFILE_FIELDS:
        out[col] = t[col].astype(str).to_numpy()
    return out


def build_samples(
    visits: pd.DataFrame,
    split_ids: pd.DataFrame,
    train_protocol: str = "last_visit",
    eval_protocol: str = "last_visit",
) -> dict[str, pd.DataFrame]:
    """samples_{train,val,test}: the train split under ``train_protocol``, val/test under ``eval_protocol``."""
    split_of = visits["subject_id"].map(split_ids.set_index("subject_id")["split"])
    out = {}
    for split in SPLITS:
        protocol = train_protocol if split == "train" else eval_protocol
        out[split] = make_samples(visits[split_of == split], protocol)
    return out


def sample_stats(samples: dict[str, pd.DataFrame], protocols: dict[str, str]) -> dict:
    """Per split: samples, patients, single-visit samples, protocol, and the long tail: the
    samples whose current visit holds a diagnosis seen at most ``RARE_MAX_COUNT`` times in train
    (``rare_dx_samples``, ``rare_dx_share``)."""
    counts = diagnosis_counts(samples["train"]) if "train" in samples else {}
    out = {}
    for split, df in samples.items():
        rare = rare_diagnosis_mask(df, counts) if len(df) else np.zeros(0, dtype=bool)
        out[split] = {
            "samples": int(len(df)),
            "patients": int(df["subject_id"].nunique()) if len(df) else 0,
            "single_visit_samples": int((df["n_past"] == 0).sum()) if len(df) else 0,
            "protocol": protocols[split],
            "rare_dx_samples": int(rare.sum()),
            "rare_dx_share": round(float(rare.mean()), 4) if len(df) else 0.0,
        }
    return out
