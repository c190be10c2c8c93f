"""The registered MLflow model ``leader-student``: a pyfunc wrapper around the LEADER(S) student.

Input: a DataFrame with one row per patient:

* ``diagnoses``, ``procedures``: list of visits, each a list of ICD codes (no dots), current visit last;
* ``medications``: ATC-3 lists of the PAST visits only (``[]`` for a first visit / no history);
* profile fields ``gender``, ``age``, ``insurance``, ``language``, ``marital_status``, ``ethnicity``,
  ``admission_type`` (missing columns or unseen values fall back to ``unknown``);
* optional ``top_k`` (int; default the ``top_k`` the model was logged with; ``0`` = all).

Output: a long DataFrame with one row per (patient, rank): ``row`` (0-based position of the
patient in the input), ``rank`` (1 = most likely), ``atc3``, ``name`` (lower-cased WHO class name)
and ``probability``.

Loading (``mlflow.pyfunc.load_model("models:/leader-student/1")``) needs only the installed
``leader_kedro`` package: the wrapper class is pickled by reference and the weights, config,
vocabulary and names travel as the ``student_model`` artifact directory.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from leader_kedro.contracts import PROFILE_FIELDS
from leader_kedro.student.model import StudentBundle, predict_proba_encoded

logger = logging.getLogger(__name__)

REGISTERED_MODEL_NAME = "leader-student"
# what a patient record may carry besides its codes (all optional: missing -> unknown)
PROFILE_COLUMNS = (*PROFILE_FIELDS, "age")
OUTPUT_COLUMNS = ["row", "rank", "atc3", "name", "probability"]
_OUTPUT_INDEX = pd.Index(OUTPUT_COLUMNS)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value) -> list:
    if _is_missing(value):
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return [_as_list(v) if isinstance(v, (list, tuple, np.ndarray)) else str(v) for v in value]


def _columns(model_input) -> tuple[int, dict[str, list]]:
    """The input's columns as plain lists (one column access each, no per-row pandas work)."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    try:  # the column arrays themselves (pandas is pinned; the public route below is slower)
        return len(frame), {
            c: frame._get_column_array(i).tolist() for i, c in enumerate(frame.columns)
        }
    except (AttributeError, TypeError):  # pragma: no cover - another pandas
        values = frame.to_numpy(dtype=object)
        return len(frame), dict(zip(frame.columns, values.T.tolist(), strict=True))


def parse_records(model_input) -> dict:
    """Serving rows -> the encoder's lists: visits of codes, profile values, ages, top_k.

    Missing profile columns or values become ``unknown`` (age: NaN); codes are matched as strings.
    """
    n, cols = _columns(model_input)
    missing = [c for c in ("diagnoses", "procedures", "medications") if c not in cols]
    if missing:
        raise ValueError(
            f"leader-student input lacks column(s) {missing}; expected diagnoses and procedures "
            "(list of visits, current visit last) and medications (past visits only, [] if none)"
        )
    dx_col, px_col, rx_col = cols["diagnoses"], cols["procedures"], cols["medications"]
    for r in range(n):
        dx, px, rx = dx_col[r], px_col[r], rx_col[r]
        if _is_missing(rx):
            rx_col[r] = rx = []
        n_dx = 0 if _is_missing(dx) else len(dx)
        n_px = 0 if _is_missing(px) else len(px)
        if not n_dx or n_px != n_dx or len(rx) != n_dx - 1:
            raise ValueError(
                f"leader-student input row {r}: expected len(diagnoses) == len(procedures) >= 1 and "
                f"len(medications) == len(diagnoses) - 1 (past visits only), got "
                f"{n_dx}, {n_px}, {len(rx)}"
            )
    profile = {}
    for col in PROFILE_FIELDS:
        values = cols.get(col)
        profile[col] = (
            ["unknown" if _is_missing(v) else str(v) for v in values]
            if values is not None
            else ["unknown"] * n
        )
    ages = cols.get("age")
    ages = (
        [float("nan") if _is_missing(v) else float(v) for v in ages]
        if ages is not None
        else [float("nan")] * n
    )
    return {
        "n": n,
        "diagnoses": dx_col,
        "procedures": px_col,
        "medications": rx_col,
        "profile": profile,
        "ages": ages,
        "top_k": cols.get("top_k"),
    }


def records_to_samples(model_input: pd.DataFrame) -> pd.DataFrame:
    """Serving rows -> sample rows of the contract (``sample_id`` = the row position)."""
    parsed = parse_records(model_input)
    rows = []
    for r in range(parsed["n"]):
        row = {
            "sample_id": str(r),
            "n_past": len(parsed["diagnoses"][r]) - 1,
            **{c: _as_list(parsed[c][r]) for c in ("diagnoses", "procedures", "medications")},
        }
        for col in PROFILE_FIELDS:
            row[col] = parsed["profile"][col][r]
        row["age"] = parsed["ages"][r]
        rows.append(row)
    return pd.DataFrame(rows)


def rank_predictions(probs: np.ndarray, vocab: dict, code_names: dict, top_k) -> pd.DataFrame:
    """Long table of the top-k medications per row (all when k <= 0)."""
    meds, names = _label_arrays(vocab, code_names)
    return _rank(probs, meds, names, top_k)


def _label_arrays(vocab: dict, code_names: dict | None):
    """The medication codes and names as string arrays, to be indexed without a Python loop."""
    meds = list(vocab["medication"])
    names = (code_names or {}).get("medication", {})
    dtype = pd.Series(["x"]).dtype  # what a column of Python strings becomes in this pandas
    return (
        pd.array(meds, dtype=dtype),
        pd.array([str(names.get(m, "")) for m in meds], dtype=dtype),
    )


def _rank(probs: np.ndarray, meds, names, top_k) -> pd.DataFrame:
    n, m = probs.shape
    k = np.asarray([int(t) if t and t > 0 else m for t in top_k], dtype=np.int64)
    k = np.minimum(k, m)
    order = np.argsort(-probs, axis=1, kind="stable")  # ties: the lower column first
    rows, ranks = np.nonzero(np.arange(m)[None, :] < k[:, None])
    cols = order[rows, ranks]
    arrays = [
        rows.astype(np.int64),
        (ranks + 1).astype(np.int64),
        meds.take(cols),
        names.take(cols),
        probs[rows, cols].astype(np.float64),
    ]
    try:  # 3-4x faster than the dict constructor (pandas is pinned; same frame)
        return pd.DataFrame._from_arrays(
            arrays, columns=_OUTPUT_INDEX, index=pd.RangeIndex(len(rows)), verify_integrity=False
        )
    except (AttributeError, TypeError):  # pragma: no cover - another pandas
        return pd.DataFrame(dict(zip(OUTPUT_COLUMNS, arrays, strict=True)), columns=OUTPUT_COLUMNS)


class LeaderStudentPyfunc(PythonModel):
    """MLflow pyfunc: patient records in, ranked ATC-3 codes with names and probabilities out."""

    def __init__(self, top_k: int = 10, batch_size: int = 256, num_threads: int | None = None):
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)
        # threads computing a large request side by side (None: one per CPU core)
        self.num_threads = num_threads
        self.bundle: StudentBundle | None = None

    def load_context(self, context) -> None:
        from leader_kedro.student.model import load_bundle

        self.bundle = load_bundle(context.artifacts["student_model"])

    def __getstate__(self):  # the weights travel as the artifact directory, not in the pickle
        state = dict(self.__dict__)
        state["bundle"] = None
        state.pop("_lookup", None)
        return state

    def _tables(self, bundle: StudentBundle):
        cached = getattr(self, "_lookup", None)
        if cached is None or cached[0] is not bundle:
            cached = (bundle, *_label_arrays(bundle.vocab, bundle.code_names))
            self._lookup = cached
        return cached[1], cached[2]

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        if self.bundle is None:
            self.load_context(context)
        bundle = self.bundle
        assert bundle is not None
        parsed = parse_records(model_input)
        n = parsed["n"]
        enc = bundle.encoder.encode(
            [str(r) for r in range(n)],
            parsed["diagnoses"],
            parsed["procedures"],
            parsed["medications"],
            parsed["profile"],
            parsed["ages"],
            where="leader-student input row",
        )
        probs = predict_proba_encoded(
            bundle.module, enc, self.batch_size, getattr(self, "num_threads", None)
        )
        top_k = parsed["top_k"]
        top_k = (
            [self.top_k if _is_missing(v) else int(v) for v in top_k]
            if top_k is not None
            else [self.top_k] * n
        )
        meds, names = self._tables(bundle)
        return _rank(probs, meds, names, top_k)


def serving_records(samples: pd.DataFrame, top_k: int | None = None) -> pd.DataFrame:
    """Contract samples as serving input rows (what a client sends), in the samples' order."""
    rows = []
    for i in samples.index:
        rec = samples.loc[i]
        row: dict[str, Any] = {
            c: [list(map(str, v)) for v in rec[c]]
            for c in ("diagnoses", "procedures", "medications")
        }
        for col in PROFILE_COLUMNS:
            value = rec.get(col) if col in samples.columns else None
            if col == "age":
                row[col] = float(value) if value is not None and value == value else float("nan")
            else:
                row[col] = "unknown" if value is None or value != value else str(value)
        if top_k is not None:
            row["top_k"] = top_k
        rows.append(row)
    return pd.DataFrame(rows)


def serving_example(samples: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """A serving input built from contract samples: a no-history patient first, then multi-visit ones."""
    if len(samples) == 0:
        raise ValueError("cannot build an MLflow input example from an empty samples table")
    n_past = samples["medications"].map(len)
    order = list(samples.index[n_past == 0][:1]) + list(samples.index[n_past > 0][: n - 1])
    order = order or list(samples.index[:n])
    # a first-visit row has medications == []; keep at least one non-empty row for type inference
    return serving_records(samples.loc[order], top_k=5)


def _optional_profile(signature):
    """Profile fields and ``top_k`` may be left out of a request (they fall back to defaults)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    optional = set(PROFILE_COLUMNS) | {"top_k"}
    cols = [
        ColSpec(c.type, c.name, required=c.name not in optional) for c in signature.inputs.inputs
    ]
    return ModelSignature(inputs=Schema(cols), outputs=signature.outputs, params=signature.params)


def log_student_model(
    bundle,
    example_samples: pd.DataFrame,
    name: str = "leader_student",
    registered_model_name: str | None = REGISTERED_MODEL_NAME,
    top_k: int = 10,
) -> dict:
    """Log (and register) the student as an MLflow pyfunc in the active run; returns model info."""
    import mlflow
    from mlflow.models import infer_signature

    from leader_kedro import __version__
    from leader_kedro.student.model import save_bundle

    example_in = serving_example(example_samples)
    wrapper = LeaderStudentPyfunc(top_k=top_k)
    wrapper.bundle = bundle
    example_out = wrapper.predict(None, example_in)
    wrapper.bundle = None  # the artifact directory, not the pickle, carries the weights
    signature = _optional_profile(infer_signature(example_in, example_out))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "student_model"
        save_bundle(bundle, model_dir)
        import safetensors
        import torch

        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=wrapper,
            artifacts={"student_model": str(model_dir)},
            signature=signature,
            input_example=example_in,
            registered_model_name=registered_model_name,
            pip_requirements=[
                f"leader_kedro=={__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                f"safetensors=={safetensors.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )
    return {
        "model_uri": info.model_uri,
        "registered_model_name": registered_model_name,
        "registered_model_version": getattr(info, "registered_model_version", None),
        "run_id": info.run_id,
        "signature": str(signature),
    }
