"""The shapes that travel between stages, defined once (docs/contracts.md), and the error types.

- the code types and profile fields of ``visits`` / ``samples_*``;
- multi-hot labels over ``vocab["medication"]``;
- the predictions table: ``sample_id`` + one probability column per medication;
- the patient groups (single-visit = no history, multi-visit) and the rare-code strata;
- the rows of the teacher-feature cache aligned to a list of sample ids;
- the project's error types, each naming the artifact, file or parameter at fault.

Unknown codes (a label outside the vocabulary) follow one rule everywhere: they are dropped,
counted, and the count is reported by the caller and logged here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ errors


class ParameterError(ValueError):
    """A parameter is unknown, missing or of the wrong type; the message names its full path."""


class IngestInputError(ValueError):
    """Bad raw input; the message names the file/column/parameter and what was expected."""


class TeacherConfigError(ParameterError):
    """A teacher parameter is invalid (unknown backbone, target module not in the model, ...)."""


class StaleFeaturesError(RuntimeError):
    """The cached teacher features do not belong to the current teacher + prompts."""


class MissingArtifactError(RuntimeError):
    """A stage's input was never produced; the message names the command that makes it."""


class DamagedArtifactError(RuntimeError):
    """A stage's input exists but cannot be read (truncated, empty, garbage, or a half-written
    file); the message names the artifact and the command that rebuilds it."""


#: The error types whose message is the whole story: ``kedro run`` prints them as one line and
#: writes the traceback to the log file only (``leader_kedro.cli``).
USER_ERRORS: tuple[type[Exception], ...] = (
    ParameterError,
    IngestInputError,
    StaleFeaturesError,
    MissingArtifactError,
    DamagedArtifactError,
)


# --------------------------------------------------------------------------- code types, profile

#: The list columns of ``visits`` and ``samples_*``, in the order the prompt and student use.
CODE_TYPES = ("diagnoses", "procedures", "medications")
#: Singular kind of each code type (keys of ``code_names``, prefixes of vocab tokens).
CODE_KIND = {"diagnoses": "diagnosis", "procedures": "procedure", "medications": "medication"}
CODE_KINDS = tuple(CODE_KIND.values())
TOKEN_PREFIX = {"medication": "M_", "diagnosis": "D_", "procedure": "P_"}
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[MASK]"]
#: Categorical profile fields of a visit (``age`` is numeric and kept beside them).
PROFILE_FIELDS = (
    "gender",
    "insurance",
    "language",
    "marital_status",
    "ethnicity",
    "admission_type",
)

FEATURES_COMMAND = "kedro run --pipeline=features"

# ------------------------------------------------------------------------------------- models

#: Student variant -> its model name (the main student, the ablations with one part off, and the
#: control distilled from teacher features shuffled across the train samples).
STUDENT_VARIANTS = {
    "main": "student",
    "no_kd": "student_no_kd",
    "no_align": "student_no_align",
    "shuffled_kd": "student_shuffled_kd",
}
#: The synthetic generator's true label probabilities: the ceiling of the evaluation. Ingest
#: writes ``oracle_predictions_{val,test}`` for every source, with no rows for real MIMIC (only the
#: generator knows them), and the evaluation leaves an oracle without rows out.
ORACLE = "oracle"
#: Every compared model, in table order, with its label in the report.
MODEL_LABELS = {
    "teacher": "Teacher (LM + LoRA + head)",
    "student": "Student LEADER(S)",
    "student_no_kd": "Student w/o distillation",
    "student_no_align": "Student w/o alignment",
    "student_shuffled_kd": "Student, teacher features shuffled across samples (control)",
    "baseline_mostfreq": "Most-frequent drugs",
    "baseline_logreg": "Multi-hot logistic regression",
    ORACLE: "Oracle: the generator's true probabilities (synthetic only)",
}
MODELS = tuple(MODEL_LABELS)

# ------------------------------------------------------------------------------------- labels


def multi_hot(
    code_lists: Iterable[Iterable[str] | None],
    vocabulary: Sequence[str],
    what: str = "target",
    dtype: Any = np.float32,
) -> tuple[np.ndarray, int]:
    """``(N x M matrix, n_unknown)`` from lists of codes, columns in ``vocabulary`` order.

    Codes outside ``vocabulary`` are dropped and counted; a warning names ``what`` and an example.
    """
    index = {code: j for j, code in enumerate(vocabulary)}
    lists = list(code_lists)
    out = np.zeros((len(lists), len(index)), dtype=dtype)
    unknown: list[str] = []
    for i, codes in enumerate(lists):
        for code in codes if codes is not None else ():
            j = index.get(code)
            if j is None:
                unknown.append(code)
            else:
                out[i, j] = 1
    if unknown:
        logger.warning(
            "%s: %d code(s) outside the vocabulary of %d were dropped (e.g. %s)",
            what,
            len(unknown),
            len(index),
            sorted(set(map(str, unknown)))[:3],
        )
    return out, len(unknown)


def label_matrix(
    samples: pd.DataFrame, vocab: Mapping, name: str = "samples", dtype: Any = np.float32
) -> tuple[np.ndarray, int]:
    """Multi-hot ``target`` of a samples table over ``vocab["medication"]`` and its unknown count."""
    if "target" not in samples.columns:
        raise ValueError(f"{name}: column 'target' (list of ATC3 codes) is missing")
    return multi_hot(samples["target"], list(vocab["medication"]), f"{name}.target", dtype)


# -------------------------------------------------------------------------------- predictions


def predictions_frame(
    sample_ids: Sequence[Any], prob: np.ndarray, medications: Sequence[str]
) -> pd.DataFrame:
    """A predictions table: ``sample_id`` + one float64 column per medication, in vocab order."""
    meds = list(medications)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.shape != (len(sample_ids), len(meds)):
        raise ValueError(
            f"probabilities have shape {prob.shape}, expected {(len(sample_ids), len(meds))}"
        )
    frame = pd.DataFrame(prob, columns=meds)
    frame.insert(0, "sample_id", [str(s) for s in sample_ids])
    return frame


#: Key columns of a long predictions table over seeds (``student_seed_predictions``).
SEED_PREDICTION_KEYS = ("model", "seed", "split", "sample_id")


def seed_predictions_frame(
    model: str,
    seed: int,
    split: str,
    sample_ids: Sequence[Any],
    prob: np.ndarray,
    medications: Sequence[str],
) -> pd.DataFrame:
    """Rows of the long table: ``model``, ``seed``, ``split``, ``sample_id`` + one column per
    medication (a :func:`predictions_frame` with the model, seed and split in front)."""
    frame = predictions_frame(sample_ids, prob, medications)
    frame.insert(0, "split", split)
    frame.insert(0, "seed", int(seed))
    frame.insert(0, "model", model)
    return frame


def prediction_matrix(
    predictions: pd.DataFrame, samples: pd.DataFrame, medications: Sequence[str], name: str
) -> np.ndarray:
    """Probabilities of a predictions table aligned to ``samples`` rows and the medication order.

    A table in another row order but with the same sample ids is re-ordered (logged); missing
    columns or rows, and values outside [0, 1], are an error naming the table.
    """
    meds = list(medications)
    if "sample_id" not in predictions.columns:
        raise ValueError(
            f"{name}: column 'sample_id' is missing (expected sample_id + {len(meds)} medication columns)"
        )
    missing = [m for m in meds if m not in predictions.columns]
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} medication column(s) of vocab['medication'] are missing, "
            f"e.g. {missing[:5]}"
        )
    pred_ids = predictions["sample_id"].astype(str).tolist()
    want = samples["sample_id"].astype(str).tolist()
    if pred_ids != want:
        if len(set(pred_ids)) != len(pred_ids) or set(pred_ids) != set(want):
            only_pred = sorted(set(pred_ids) - set(want))[:5]
            only_samples = sorted(set(want) - set(pred_ids))[:5]
            raise ValueError(
                f"{name}: sample_id does not match the samples of its split "
                f"({len(pred_ids)} rows vs {len(want)} samples; only in predictions: {only_pred}; "
                f"missing from predictions: {only_samples}). Re-run the stage that writes it."
            )
        logger.warning("%s: rows are not in the samples' order; re-ordering by sample_id", name)
        predictions = predictions.set_index(predictions["sample_id"].astype(str)).loc[want]
    prob = predictions[meds].to_numpy(dtype=np.float64)
    if not np.isfinite(prob).all():
        raise ValueError(f"{name}: {int((~np.isfinite(prob)).sum())} probabilities are NaN/inf")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise ValueError(
            f"{name}: probabilities must lie in [0, 1], got [{prob.min():.4g}, {prob.max():.4g}]"
        )
    return prob


# ------------------------------------------------------------------------------------- groups

GROUPS = ("overall", "single_visit", "multi_visit")
#: the rare-code strata: the current visit holds a diagnosis seen at most ``RARE_MAX_COUNT``
#: times in train (``rare_dx``), or only more frequent ones (``common_dx``)
RARE_GROUPS = ("rare_dx", "common_dx")
RARE_MAX_COUNT = 5


def diagnosis_counts(samples_train: pd.DataFrame) -> dict[str, int]:
    """How many train visits hold each diagnosis (each visit counted once per code).

    The visits are those of the train patients: each patient's sample with the longest history
    holds all of them, whatever the sample protocol (``last_visit`` or ``every_visit``).
    """
    if samples_train.empty:
        return {}
    longest = samples_train.sort_values("n_past", kind="stable").drop_duplicates(
        "subject_id", keep="last"
    )
    counts: dict[str, int] = {}
    for visits in longest["diagnoses"]:
        for visit in visits:
            for code in set(visit):
                counts[code] = counts.get(code, 0) + 1
    return counts


def rare_diagnosis_mask(
    samples: pd.DataFrame, train_counts: Mapping[str, int], max_count: int = RARE_MAX_COUNT
) -> np.ndarray:
    """Per sample: does its current visit hold a diagnosis seen at most ``max_count`` times in
    train (``diagnosis_counts``; a code never seen in train counts 0)?"""
    return np.array(
        [
            any(train_counts.get(code, 0) <= max_count for code in visits[-1])
            if len(visits)
            else False
            for visits in samples["diagnoses"]
        ],
        dtype=bool,
    )


def group_masks(
    samples: pd.DataFrame,
    train_counts: Mapping[str, int] | None = None,
    max_count: int = RARE_MAX_COUNT,
) -> dict[str, np.ndarray]:
    """overall / single_visit (no earlier visit) / multi_visit, as boolean masks over the rows,
    and with ``train_counts`` (``diagnosis_counts`` of the train samples) the rare-code strata
    ``rare_dx`` / ``common_dx``.

    The history length is ``n_past``, or the number of past medication lists when that column is
    absent (the two agree by the samples contract).
    """
    if "n_past" in samples.columns:
        n_past = samples["n_past"].to_numpy()
    elif "medications" in samples.columns:
        n_past = samples["medications"].map(len).to_numpy()
    else:
        raise ValueError(
            "samples: neither 'n_past' nor 'medications' is present; cannot tell single- from "
            "multi-visit patients"
        )
    masks = {
        "overall": np.ones(len(samples), dtype=bool),
        "single_visit": n_past == 0,
        "multi_visit": n_past > 0,
    }
    if train_counts is not None:
        rare = rare_diagnosis_mask(samples, train_counts, max_count)
        masks.update({"rare_dx": rare, "common_dx": ~rare})
    return masks


# ---------------------------------------------------------------------------- teacher features


def aligned_teacher_features(
    features: Mapping[str, Any], sample_ids: Sequence[Any], name: str = "teacher_features_train"
):
    """Rows of ``features["hidden"]`` in the order of ``sample_ids`` (a torch tensor, dtype kept).

    A cache without ``sample_ids``/``hidden``, of the wrong shape, or lacking an id raises
    :class:`StaleFeaturesError` naming the artifact and the command that rebuilds it.
    """
    import torch

    for key in ("sample_ids", "hidden"):
        if key not in features:
            raise StaleFeaturesError(
                f"{name} has no '{key}' entry (expected a dict with sample_ids, hidden, "
                f"fingerprint, metadata); rebuild it with `{FEATURES_COMMAND}`"
            )
    hidden = features["hidden"]
    if not isinstance(hidden, torch.Tensor):
        hidden = torch.as_tensor(np.asarray(hidden))
    if hidden.ndim != 2 or hidden.shape[0] != len(features["sample_ids"]):
        raise StaleFeaturesError(
            f"{name}['hidden'] has shape {tuple(hidden.shape)}; expected "
            f"[{len(features['sample_ids'])}, H]; rebuild it with `{FEATURES_COMMAND}`"
        )
    position = {str(s): i for i, s in enumerate(features["sample_ids"])}
    wanted = [str(s) for s in sample_ids]
    missing = [s for s in wanted if s not in position]
    if missing:
        raise StaleFeaturesError(
            f"{name} has no row for {len(missing)} of {len(wanted)} sample(s) (e.g. {missing[:3]}); "
            f"the cache is stale or from another split: rebuild it with `{FEATURES_COMMAND}`"
        )
    return hidden.index_select(0, torch.as_tensor([position[s] for s in wanted], dtype=torch.long))


def standardised_teacher_features(
    features: Mapping[str, Any],
    sample_ids: Sequence[Any],
    name: str = "teacher_features_train",
    train_features: Mapping[str, Any] | None = None,
):
    """Rows of ``features`` in ``sample_ids`` order, standardised per dimension with the TRAIN
    statistics the cache carries: ``(hidden - train_mean) / train_std``, float32 torch tensor.

    Every split's cache holds the train statistics in ``metadata["standardisation"]`` (val and test
    copy them from the train cache; the fingerprint covers them). With ``train_features``, the
    statistics must be the train cache's own (same sha256). A cache without statistics, or whose
    statistics do not fit, raises :class:`StaleFeaturesError` naming the artifact and the command.
    """
    import torch

    stats = dict(features.get("metadata") or {}).get("standardisation") if features else None
    if not stats or any(k not in stats for k in ("mean", "std", "sha256")):
        raise StaleFeaturesError(
            f"{name} carries no standardisation statistics (made before they were stored, or "
            f"the train extraction was switched off); rebuild it with `{FEATURES_COMMAND}`"
        )
    if train_features is not None:
        train_stats = dict(train_features.get("metadata") or {}).get("standardisation") or {}
        if train_stats.get("sha256") != stats["sha256"]:
            raise StaleFeaturesError(
                f"{name} does not carry the statistics of teacher_features_train (the caches come "
                f"from different runs); rebuild them with `{FEATURES_COMMAND}`"
            )
    hidden = aligned_teacher_features(features, sample_ids, name).float()
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    if hidden.shape[1] != mean.numel() or std.numel() != mean.numel():
        raise StaleFeaturesError(
            f"{name}: {hidden.shape[1]} feature dimensions but statistics for {mean.numel()}; "
            f"rebuild it with `{FEATURES_COMMAND}`"
        )
    return (hidden - mean) / std
