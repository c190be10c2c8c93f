"""Most-frequent and logistic-regression baselines on the tiny cohort."""

import numpy as np
import pytest
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro import contracts as C  # noqa: E402
from leader_kedro.evaluation import baselines as B  # noqa: E402
from leader_kedro.evaluation import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def cohort():
    return make_tiny_cohort(n_patients=200, seed=3)


def test_most_frequent_ranks_by_train_frequency(cohort):
    vocab, train, test = cohort["vocab"], cohort["samples_train"], cohort["samples_test"]
    pred = B.most_frequent(train, test, vocab)
    assert list(pred.columns) == ["sample_id", *vocab["medication"]]
    assert pred["sample_id"].tolist() == test["sample_id"].tolist()
    counts = {m: sum(m in t for t in train["target"]) for m in vocab["medication"]}
    row = pred.iloc[0][vocab["medication"]].to_numpy(dtype=float)
    expected = np.array([counts[m] / len(train) for m in vocab["medication"]])
    np.testing.assert_allclose(row, expected)
    assert (pred[vocab["medication"]].nunique() == 1).all()  # same probabilities for every sample


def test_logreg_beats_most_frequent_and_is_seeded(cohort):
    vocab, train, val, test = (
        cohort[k] for k in ("vocab", "samples_train", "samples_val", "samples_test")
    )
    out, report = B.logreg(train, {"val": val, "test": test}, vocab, c=1.0, seed=0)
    again, _ = B.logreg(train, {"val": val, "test": test}, vocab, c=1.0, seed=0)
    assert out["test"].equals(again["test"])
    y, _ = C.label_matrix(test, vocab)
    p_lr = C.prediction_matrix(out["test"], test, vocab["medication"], "logreg")
    p_mf = C.prediction_matrix(
        B.most_frequent(train, test, vocab), test, vocab["medication"], "mostfreq"
    )
    assert M.summary(y, p_lr, 0.3)["prauc"] > M.summary(y, p_mf, 0.3)["prauc"] + 0.05
    assert report["classifiers"] + report["constant_labels"] == len(vocab["medication"])


def test_logreg_handles_labels_never_or_always_in_train(cohort):
    vocab = dict(cohort["vocab"])
    train = cohort["samples_train"].copy()
    never = "ZZZZ"
    vocab["medication"] = [*vocab["medication"], never]
    always = vocab["medication"][0]
    train["target"] = [sorted(set(t) | {always}) for t in train["target"]]
    out, report = B.logreg(train, {"test": cohort["samples_test"]}, vocab)
    assert report["constant_labels"] == 2
    assert (out["test"][never] == 0.0).all() and (out["test"][always] == 1.0).all()


def test_feature_matrix_counts_unknown_codes(cohort):
    test = cohort["samples_test"].copy()
    test.at[0, "diagnoses"] = [*test.at[0, "diagnoses"][:-1], ["NOT_A_CODE"]]
    x, unknown = B.feature_matrix(test, cohort["vocab"])
    assert unknown["diagnosis"] == 1 and x.shape[0] == len(test)
