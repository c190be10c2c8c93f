"""The deployed ``leader-student``: a typed MLflow pyfunc (patient records in, recommendations out).

This is the model that ``register_student`` puts in the MLflow registry and that
``mlflow models serve -m models:/leader-student@champion`` serves. Its ``predict`` is typed with
pydantic models, so MLflow derives the signature from them, checks every request against them
(a wrong type or a missing field is a 400 naming the field) and the server reads
``{"inputs": [record, ...]}``.

A record (:class:`PatientRecord`):

* ``diagnoses``, ``procedures``: one list of codes per visit (ICD-9 without dots), current visit
  last; ``[]`` for a visit without procedures;
* ``medications``: ATC-3 lists of the *past* visits only (``[]`` for a first visit);
* optional profile: ``gender``, ``age``, ``insurance``, ``language``, ``marital_status``,
  ``ethnicity``, ``admission_type`` (missing or unseen values count as ``unknown``);
* optional ``top_k``: how many classes to return (default: the model's; ``0`` = all).

An answer (:class:`PatientRecommendations`), one per record, in request order: ``row``,
``recommendations`` (``rank``, ``atc3``, ``name``, ``probability``, most likely first),
``ddi_warnings`` (the pairs among the recommended classes that interact, from the DDI graph the
model was registered with) and ``unknown_codes`` (codes and profile fields of the record that the
model does not know: counted, ignored, never an error).

A record that breaks the rules (an unknown field, no visit, visit lists of different lengths,
medications for the current visit, a negative ``top_k``, an impossible age) makes the whole
request fail with one ``MlflowException.invalid_parameter_value`` (HTTP 400) that names each bad
record and why; :func:`record_problems` is the same check for batch scoring, which skips the bad
records instead.

The code travels with the model (``code_paths``), so loading it does not need this package to be
installed.
"""

from __future__ import annotations

import gc
import json
import math
from contextlib import contextmanager
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict, TypeAdapter

from leader_kedro.contracts import PROFILE_FIELDS

RECORD_FIELDS = (
    "diagnoses",
    "procedures",
    "medications",
    "gender",
    "age",
    "insurance",
    "language",
    "marital_status",
    "ethnicity",
    "admission_type",
    "top_k",
)
MAX_AGE = 130.0
DDI_FILE = "ddi_pairs.json"
#: columns of :func:`to_frame` (one row per patient and recommended class)
FRAME_COLUMNS = [
    "row",
    "rank",
    "atc3",
    "name",
    "probability",
    "ddi_with",
    "unknown_codes",
]


class PatientRecord(BaseModel):
    """One patient to score (see the module docstring)."""

    # unknown fields are kept so that predict can name them in its error (not silently dropped)
    model_config = ConfigDict(extra="allow")

    diagnoses: list[list[str]]
    procedures: list[list[str]]
    medications: list[list[str]]
    gender: str | None = None
    age: float | None = None
    insurance: str | None = None
    language: str | None = None
    marital_status: str | None = None
    ethnicity: str | None = None
    admission_type: str | None = None
    top_k: int | None = None


class Recommendation(BaseModel):
    rank: int
    atc3: str
    name: str
    probability: float


class DdiWarning(BaseModel):
    """Two recommended classes that interact (the pair is listed once, higher-ranked class first)."""

    atc3_a: str
    name_a: str
    atc3_b: str
    name_b: str


class UnknownCodes(BaseModel):
    """What the model could not use: codes outside its vocabulary, profile values it never saw."""

    diagnoses: int
    procedures: int
    medications: int
    profile_fields: list[str]


class PatientRecommendations(BaseModel):
    row: int
    recommendations: list[Recommendation]
    ddi_warnings: list[DdiWarning]
    unknown_codes: UnknownCodes


def record_problems(record: PatientRecord | dict) -> list[str]:
    """Why a record cannot be scored (empty: it can). Types are pydantic's job; this checks the
    shape: known fields, at least one visit, one list per visit, medications of past visits only."""
    if isinstance(record, dict):
        extra = sorted(set(record) - set(RECORD_FIELDS))
        data = record
    else:
        extra = sorted(record.model_extra or {})
        data = {f: getattr(record, f) for f in RECORD_FIELDS}  # no copy (model_dump copies)
    problems = []
    if extra:
        problems.append(f"unknown field(s) {extra}; a record has {list(RECORD_FIELDS)}")
    dx, px, rx = data.get("diagnoses"), data.get("procedures"), data.get("medications")
    if not dx:
        problems.append("diagnoses is empty: give at least one visit (the current visit last)")
    else:
        if px is None or len(px) != len(dx):
            problems.append(
                f"procedures has {0 if px is None else len(px)} visit(s) but diagnoses has "
                f"{len(dx)}: give one list per visit ([] for a visit without procedures)"
            )
        if rx is None or len(rx) != len(dx) - 1:
            problems.append(
                f"medications has {0 if rx is None else len(rx)} visit(s); it lists the past "
                f"visits only, so it needs len(diagnoses) - 1 = {len(dx) - 1} ([] for a first visit)"
            )
    top_k = data.get("top_k")
    if top_k is not None and top_k < 0:
        problems.append(f"top_k must be >= 0 (0 = every class), got {top_k}")
    age = data.get("age")
    if age is not None and (math.isnan(age) or not 0.0 <= age <= MAX_AGE):
        problems.append(f"age must be between 0 and {MAX_AGE:g} years, got {age}")
    return problems


def invalid_request_message(problems: dict[int, list[str]], n: int) -> str:
    parts = [f"record {i}: " + "; ".join(p) for i, p in sorted(problems.items())]
    return f"{len(problems)} of {n} record(s) cannot be scored, so none was: " + " | ".join(parts)


def ddi_pairs(ddi_adjacency: pd.DataFrame | None, medications: list[str]) -> list[list[str]]:
    """The interacting pairs ``[a, b]`` (a < b) of the adjacency table among ``medications``."""
    if ddi_adjacency is None or ddi_adjacency.empty:
        return []
    meds = [m for m in medications if m in ddi_adjacency.index and m in ddi_adjacency.columns]
    table = ddi_adjacency.loc[meds, meds].to_numpy()
    pairs = set()
    for i, j in zip(*np.nonzero(table), strict=True):
        if i != j:
            a, b = sorted((meds[i], meds[j]))
            pairs.add((a, b))
    return [list(p) for p in sorted(pairs)]


class LeaderStudentService(PythonModel):
    """MLflow pyfunc: :class:`PatientRecord` list in, :class:`PatientRecommendations` list out."""

    def __init__(self, top_k: int = 10, batch_size: int = 256):
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)
        self.bundle: Any = None
        self.ddi: list[list[str]] = []

    def load_context(self, context) -> None:
        from leader_kedro.student.model import load_bundle

        self.bundle = load_bundle(context.artifacts["student_model"])
        path = context.artifacts.get("ddi_pairs")
        self.ddi = json.loads(open(path).read())["pairs"] if path else []
        self._tables = None
        # what is loaded now lives as long as the server: move it out of the collector's view, so
        # that the collections a request's allocations start (MLflow's input check builds a
        # pydantic object per record before predict) scan only young objects
        gc.collect()
        gc.freeze()

    def __getstate__(self):  # the weights travel as artifacts, not in the pickle
        state = dict(self.__dict__)
        state["bundle"] = None
        state["ddi"] = []
        state.pop("_tables", None)
        return state

    def _lookups(self):
        tables = getattr(self, "_tables", None)
        if tables is None or tables[0] is not self.bundle:
            vocab = self.bundle.vocab
            meds = list(vocab["medication"])
            names = (self.bundle.code_names or {}).get("medication", {})
            index = {m: j for j, m in enumerate(meds)}
            ddi = np.zeros((len(meds), len(meds)), dtype=bool)
            for a, b in self.ddi:
                if a in index and b in index:
                    ddi[index[a], index[b]] = ddi[index[b], index[a]] = True
            tables = (self.bundle, meds, [str(names.get(m, "")) for m in meds], ddi)
            self._tables = tables
        return tables[1:]

    def predict(
        self, context, model_input: list[PatientRecord], params: dict[str, Any] | None = None
    ) -> list[PatientRecommendations]:
        from mlflow.exceptions import MlflowException

        if self.bundle is None:
            self.load_context(context)
        records = [r if isinstance(r, PatientRecord) else PatientRecord(**r) for r in model_input]
        problems = {i: p for i, r in enumerate(records) if (p := record_problems(r))}
        if problems:
            raise MlflowException.invalid_parameter_value(
                invalid_request_message(problems, len(records))
            )
        n = len(records)
        if n == 0:
            return []
        with collector_paused():
            return self._recommend(records)

    def _recommend(self, records: list[PatientRecord]) -> list[PatientRecommendations]:
        from leader_kedro.student.model import predict_proba_encoded

        n = len(records)
        encoder = self.bundle.encoder
        profile = {
            f: ["unknown" if getattr(r, f, None) is None else str(getattr(r, f)) for r in records]
            for f in PROFILE_FIELDS
        }
        ages = [float("nan") if r.age is None else float(r.age) for r in records]
        enc = encoder.encode(
            [str(i) for i in range(n)],
            [r.diagnoses for r in records],
            [r.procedures for r in records],
            [r.medications for r in records],
            profile,
            ages,
            where="leader-student record",
        )
        probs = predict_proba_encoded(self.bundle.module, enc, self.batch_size)
        meds, names, ddi = self._lookups()
        ks = [self.top_k if r.top_k is None else int(r.top_k) for r in records]
        ks = [len(meds) if k <= 0 else min(k, len(meds)) for k in ks]
        width = max(ks)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :width]  # ties: lower column first
        top_probs = np.take_along_axis(probs, order, axis=1).tolist()
        # interacting pairs among each patient's top classes, all patients at once
        interacts = ddi[order[:, :, None], order[:, None, :]]
        interacts &= np.triu(np.ones((width, width), dtype=bool), 1)
        flagged = set(np.flatnonzero(interacts.any(axis=(1, 2))).tolist())
        unknown = _unknown_codes(encoder, records)
        answers = []
        for i, (k, cols, p) in enumerate(zip(ks, order.tolist(), top_probs, strict=True)):
            warnings = []
            if i in flagged:
                for x, y in zip(*np.nonzero(interacts[i, :k, :k]), strict=True):
                    a, b = cols[x], cols[y]
                    warnings.append(
                        {
                            "atc3_a": meds[a],
                            "name_a": names[a],
                            "atc3_b": meds[b],
                            "name_b": names[b],
                        }
                    )
            answers.append(
                {
                    "row": i,
                    "recommendations": [
                        {
                            "rank": rank + 1,
                            "atc3": meds[c],
                            "name": names[c],
                            "probability": p[rank],
                        }
                        for rank, c in enumerate(cols[:k])
                    ],
                    "ddi_warnings": warnings,
                    "unknown_codes": unknown[i],
                }
            )
        # one validation builds every answer object (pydantic's core; ~2x faster than ~3,000
        # model constructors called one by one from Python)
        return _ANSWERS.validate_python(answers)


_ANSWERS = TypeAdapter(list[PatientRecommendations])


@contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector while a request builds its answers.

    A request of 256 patients allocates ~3,000 pydantic objects; each 700 allocations may start a
    collection, and the oldest generation holds the ~300k long-lived objects of torch and MLflow,
    so a full pass costs tens of milliseconds and made up most of the time of a large request.
    Nothing the request builds is cyclic garbage; reference counting frees it as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _unknown_codes(encoder, records: list[PatientRecord]) -> list[dict]:
    """Per record: how many of its codes (every visit, not only the model's window) are outside
    the vocabulary, per type, and which profile fields hold a value the model never saw. One
    C-level lookup per code type over the codes of all records."""
    n = len(records)
    counts: dict[str, list[int]] = {}
    for attr, kind in (
        ("diagnoses", "diagnosis"),
        ("procedures", "procedure"),
        ("medications", "medication"),
    ):
        visits = [getattr(r, attr) for r in records]
        lengths = [sum(map(len, v)) for v in visits]
        flat = chain.from_iterable(chain.from_iterable(visits))
        known = np.fromiter(
            map(encoder.lookup[kind].__contains__, flat), dtype=bool, count=sum(lengths)
        )
        owner = np.repeat(np.arange(n), lengths)
        counts[attr] = np.bincount(owner[~known], minlength=n).tolist()
    fields: list[list[str]] = [[] for _ in range(n)]
    for field, index in zip(encoder.fields, encoder.field_index, strict=True):
        for i, r in enumerate(records):
            value = getattr(r, field, None)
            if value is not None and str(value) not in index:
                fields[i].append(field)
    return [
        {
            "diagnoses": counts["diagnoses"][i],
            "procedures": counts["procedures"][i],
            "medications": counts["medications"][i],
            "profile_fields": fields[i],
        }
        for i in range(n)
    ]


def to_frame(answers: list[PatientRecommendations], ids: list | None = None) -> pd.DataFrame:
    """The answers as one row per (patient, recommended class): ``row`` (or the given ids),
    ``rank``, ``atc3``, ``name``, ``probability``, ``ddi_with`` (the other recommended classes
    of this patient that interact with this one, ``;``-joined) and ``unknown_codes`` (codes of the
    record the model did not know, all types together)."""
    rows = []
    for answer in answers:
        a = (
            answer
            if isinstance(answer, PatientRecommendations)
            else PatientRecommendations(**answer)
        )
        partners: dict[str, list[str]] = {}
        for w in a.ddi_warnings:
            partners.setdefault(w.atc3_a, []).append(w.atc3_b)
            partners.setdefault(w.atc3_b, []).append(w.atc3_a)
        unknown = a.unknown_codes.diagnoses + a.unknown_codes.procedures
        unknown += a.unknown_codes.medications
        for rec in a.recommendations:
            rows.append(
                {
                    "row": a.row if ids is None else ids[a.row],
                    "rank": rec.rank,
                    "atc3": rec.atc3,
                    "name": rec.name,
                    "probability": rec.probability,
                    "ddi_with": ";".join(partners.get(rec.atc3, [])),
                    "unknown_codes": unknown,
                }
            )
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
