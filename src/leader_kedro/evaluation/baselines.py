"""Simple baselines on the same samples and label space as the teacher and the student.

- ``most_frequent``: the train label frequency of each medication is the probability for every
  sample (ranks drugs by popularity; a threshold turns it into "always prescribe the top drugs").
- ``logreg``: one-vs-rest logistic regression (scikit-learn, seeded) on multi-hot features of
  the current visit's diagnoses and procedures plus the medications of the past visits (the last
  visit's and the union of all past visits'), plus a "no history" flag. Labels that never or always
  occur in train get their constant train frequency (0 or 1) instead of a classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.contracts import label_matrix, predictions_frame

logger = logging.getLogger(__name__)


def label_frequencies(samples_train: pd.DataFrame, vocab: Mapping) -> np.ndarray:
    """Share of train samples in which each medication is a label, in vocab order."""
    if len(samples_train) == 0:
        raise ValueError("samples_train is empty: the most-frequent baseline needs train labels")
    y, _ = label_matrix(samples_train, vocab, "samples_train", dtype=np.int8)
    return y.mean(0).astype(np.float64)


def most_frequent(
    samples_train: pd.DataFrame, samples: pd.DataFrame, vocab: Mapping
) -> pd.DataFrame:
    """Predictions (contract format) giving every sample the train label frequencies."""
    freq = label_frequencies(samples_train, vocab)
    prob = np.tile(freq, (len(samples), 1))
    return predictions_frame(samples["sample_id"].tolist(), prob, vocab["medication"])


def feature_matrix(samples: pd.DataFrame, vocab: Mapping) -> tuple[Any, dict[str, int]]:
    """Sparse multi-hot features and a count of codes that were not in the vocabulary.

    Blocks: current diagnoses | current procedures | last past visit's medications |
    any past visit's medications | no-history flag.
    """
    from scipy import sparse

    blocks = [
        ("diagnosis", list(vocab["diagnosis"])),
        ("procedure", list(vocab["procedure"])),
        ("medication_last", list(vocab["medication"])),
        ("medication_any", list(vocab["medication"])),
    ]
    offsets, index = {}, {}
    width = 0
    for name, codes in blocks:
        offsets[name] = width
        index[name] = {c: j for j, c in enumerate(codes)}
        width += len(codes)
    flag_col = width
    width += 1
    rows, cols = [], []
    unknown = {"diagnosis": 0, "procedure": 0, "medication": 0}

    def add(i: int, block: str, codes, kind: str) -> None:
        for code in codes if codes is not None else ():
            j = index[block].get(code)
            if j is None:
                unknown[kind] += 1
                continue
            rows.append(i)
            cols.append(offsets[block] + j)

    for i, row in enumerate(samples.itertuples(index=False)):
        dx, px, rx = list(row.diagnoses), list(row.procedures), list(row.medications)
        add(i, "diagnosis", dx[-1] if dx else [], "diagnosis")
        add(i, "procedure", px[-1] if px else [], "procedure")
        if rx:
            add(i, "medication_last", rx[-1], "medication")
            add(i, "medication_any", sorted({c for visit in rx for c in visit}), "medication")
        else:
            rows.append(i)
            cols.append(flag_col)
    data = np.ones(len(rows), dtype=np.float64)
    x = sparse.csr_matrix((data, (rows, cols)), shape=(len(samples), width))
    x.data[:] = 1.0  # duplicates (a code listed twice) stay 0/1
    return x, unknown


class LogRegBaseline:
    """One-vs-rest logistic regression over the medication vocabulary."""

    def __init__(
        self, c: float = 1.0, max_iter: int = 200, seed: int = 42, class_weight: str | None = None
    ):
        self.c, self.max_iter, self.seed, self.class_weight = c, max_iter, seed, class_weight
        self.models: list[Any] = []
        self.constant: np.ndarray | None = None

    def fit(self, samples_train: pd.DataFrame, vocab: Mapping) -> LogRegBaseline:
        from sklearn.linear_model import LogisticRegression

        x, unknown = feature_matrix(samples_train, vocab)
        if any(unknown.values()):
            logger.warning(
                "logreg baseline: codes outside the vocabulary ignored in train: %s", unknown
            )
        y, _ = label_matrix(samples_train, vocab, "samples_train", dtype=np.int8)
        freq = y.mean(0)
        self.constant = np.where((freq == 0) | (freq == 1), freq, np.nan)
        self.models = []
        for j in range(y.shape[1]):
            if not np.isnan(self.constant[j]):
                self.models.append(None)
                continue
            clf = LogisticRegression(
                C=self.c,
                max_iter=self.max_iter,
                solver="liblinear",
                random_state=self.seed,
                class_weight=self.class_weight,
            )
            clf.fit(x, y[:, j])
            self.models.append(clf)
        self.n_constant = int((~np.isnan(self.constant)).sum())
        return self

    def predict_proba(self, samples: pd.DataFrame, vocab: Mapping) -> np.ndarray:
        if self.constant is None:
            raise RuntimeError("LogRegBaseline.predict_proba called before fit")
        x, unknown = feature_matrix(samples, vocab)
        if any(unknown.values()):
            logger.warning("logreg baseline: codes outside the vocabulary ignored: %s", unknown)
        prob = np.empty((x.shape[0], len(self.models)), dtype=np.float64)
        for j, clf in enumerate(self.models):
            prob[:, j] = self.constant[j] if clf is None else clf.predict_proba(x)[:, 1]
        return prob


def logreg(
    samples_train: pd.DataFrame,
    samples_by_split: Mapping[str, pd.DataFrame],
    vocab: Mapping,
    c: float = 1.0,
    max_iter: int = 200,
    seed: int = 42,
    class_weight: str | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Fit on train, predict each split; returns the prediction tables and a small fit report."""
    model = LogRegBaseline(c=c, max_iter=max_iter, seed=seed, class_weight=class_weight).fit(
        samples_train, vocab
    )
    out = {
        split: predictions_frame(
            s["sample_id"].tolist(), model.predict_proba(s, vocab), vocab["medication"]
        )
        for split, s in samples_by_split.items()
    }
    report = {
        "constant_labels": model.n_constant,
        "classifiers": len(model.models) - model.n_constant,
    }
    return out, report
