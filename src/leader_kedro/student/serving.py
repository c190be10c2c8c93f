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

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from leader_kedro.contracts import PROFILE_FIELDS

logger = logging.getLogger(__name__)

REGISTERED_MODEL_NAME = "leader-student"
# what a patient record may carry besides its codes (all optional: missing -> unknown)
PROFILE_COLUMNS = (*PROFILE_FIELDS, "age")
OUTPUT_COLUMNS = ["row", "rank", "atc3", "name", "probability"]


def _as_list(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return [_as_list(v) if isinstance(v, (list, tuple, np.ndarray)) else str(v) for v in value]


def records_to_samples(model_input: pd.DataFrame) -> pd.DataFrame:
    """Serving rows -> sample rows of the contract (``sample_id`` = the row position)."""
    if not isinstance(model_input, pd.DataFrame):
        model_input = pd.DataFrame(model_input)
    missing = [
        c for c in ("diagnoses", "procedures", "medications") if c not in model_input.columns
    ]
    if missing:
        raise ValueError(
            f"leader-student input lacks column(s) {missing}; expected diagnoses and procedures "
            "(list of visits, current visit last) and medications (past visits only, [] if none)"
        )
    rows = []
    for r, rec in enumerate(model_input.to_dict("records")):
        dx, px, rx = (_as_list(rec.get(c)) for c in ("diagnoses", "procedures", "medications"))
        if not dx or len(px) != len(dx) or len(rx) != len(dx) - 1:
            raise ValueError(
                f"leader-student input row {r}: expected len(diagnoses) == len(procedures) >= 1 and "
                f"len(medications) == len(diagnoses) - 1 (past visits only), got "
                f"{len(dx)}, {len(px)}, {len(rx)}"
            )
        row = {
            "sample_id": str(r),
            "n_past": len(dx) - 1,
            "diagnoses": dx,
            "procedures": px,
            "medications": rx,
        }
        for col in PROFILE_COLUMNS:
            value = rec.get(col)
            if col == "age":
                row[col] = float(value) if value is not None and value == value else float("nan")
            else:
                row[col] = "unknown" if value is None or value != value else str(value)
        rows.append(row)
    return pd.DataFrame(rows)


def rank_predictions(probs: np.ndarray, vocab: dict, code_names: dict, top_k) -> pd.DataFrame:
    """Long table of the top-k medications per row (all when k <= 0)."""
    meds = list(vocab["medication"])
    names = (code_names or {}).get("medication", {})
    out = []
    for r, p in enumerate(probs):
        k = int(top_k[r]) if top_k[r] and top_k[r] > 0 else len(meds)
        order = np.argsort(-p, kind="mergesort")[:k]
        for rank, j in enumerate(order, start=1):
            out.append((r, rank, meds[j], str(names.get(meds[j], "")), float(p[j])))
    frame = pd.DataFrame(out, columns=OUTPUT_COLUMNS)
    return frame.astype({"row": "int64", "rank": "int64", "probability": "float64"})


class LeaderStudentPyfunc(PythonModel):
    """MLflow pyfunc: patient records in, ranked ATC-3 codes with names and probabilities out."""

    def __init__(self, top_k: int = 10, batch_size: int = 256):
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)
        self.bundle = None

    def load_context(self, context) -> None:
        from leader_kedro.student.model import load_bundle

        self.bundle = load_bundle(context.artifacts["student_model"])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        if self.bundle is None:
            self.load_context(context)
        samples = records_to_samples(model_input)
        probs = self.bundle.predict_proba(samples, batch_size=self.batch_size)
        if isinstance(model_input, pd.DataFrame) and "top_k" in model_input.columns:
            top_k = [self.top_k if v is None or v != v else int(v) for v in model_input["top_k"]]
        else:
            top_k = [self.top_k] * len(samples)
        return rank_predictions(probs, self.bundle.vocab, self.bundle.code_names, top_k)


def serving_example(samples: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """A serving input built from contract samples: a no-history patient first, then multi-visit ones."""
    if len(samples) == 0:
        raise ValueError("cannot build an MLflow input example from an empty samples table")
    n_past = samples["medications"].map(len)
    order = list(samples.index[n_past == 0][:1]) + list(samples.index[n_past > 0][: n - 1])
    order = order or list(samples.index[:n])
    rows = []
    for i in order:
        rec = samples.loc[i]
        row = {
            c: [list(map(str, v)) for v in rec[c]]
            for c in ("diagnoses", "procedures", "medications")
        }
        for col in PROFILE_COLUMNS:
            value = rec.get(col) if col in samples.columns else None
            if col == "age":
                row[col] = float(value) if value is not None and value == value else float("nan")
            else:
                row[col] = "unknown" if value is None or value != value else str(value)
        row["top_k"] = 5
        rows.append(row)
    # a first-visit row has medications == []; keep at least one non-empty row for type inference
    return pd.DataFrame(rows)


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
