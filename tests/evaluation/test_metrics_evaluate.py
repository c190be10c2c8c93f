"""Metrics against hand-computed cases and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, jaccard_score

from leader_kedro.evaluation import metrics as M


def _random_case(seed=0, n=40, m=12):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, m)) < 0.3).astype(int)
    y[y.sum(1) == 0, 0] = 1
    p = np.round(rng.random((n, m)), 2)  # rounding creates ties
    return y, p


def test_hand_computed_set_metrics():
    y = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    pred = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])
    per = M.set_metrics_per_sample(y, pred)
    assert per["jaccard"].tolist() == pytest.approx([1 / 3, 0.0])
    assert per["precision"].tolist() == pytest.approx([0.5, 0.0])
    assert per["recall"].tolist() == pytest.approx([0.5, 0.0])
    assert per["f1"].tolist() == pytest.approx([0.5, 0.0])
    assert M.mean_n_med(pred) == pytest.approx(1.0)


def test_hand_computed_average_precision():
    # ranking: d0 (pos), d1 (neg), d2 (pos) -> AP = (1/1 + 2/3) / 2
    y = np.array([[1, 0, 1, 0]])
    p = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert M.average_precision_per_sample(y, p)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_against_sklearn():
    y, p = _random_case()
    pred = p > 0.3
    per = M.set_metrics_per_sample(y, pred)
    assert per["jaccard"].mean() == pytest.approx(
        jaccard_score(y, pred, average="samples", zero_division=0)
    )
    assert per["f1"].mean() == pytest.approx(f1_score(y, pred, average="samples", zero_division=0))
    ap = M.average_precision_per_sample(y, p)
    expected = [average_precision_score(y[i], p[i]) for i in range(len(y))]
    np.testing.assert_allclose(ap, expected)
    s = M.summary(y, p, 0.3)
    assert s["prauc"] == pytest.approx(np.mean(expected))


def test_ddi_pooled_vs_per_visit_hand_example():
    ddi = np.zeros((4, 4))
    ddi[0, 1] = ddi[1, 0] = 1
    pred = np.array(
        [
            [1, 1, 0, 0],  # 1 pair, 1 interacting -> 1.0
            [1, 1, 1, 1],  # 6 pairs, 1 interacting -> 1/6
            [1, 0, 0, 0],  # no pair: not in the per-visit mean
        ]
    )
    assert M.ddi_rate(pred, ddi) == pytest.approx(2 / 7)
    assert M.ddi_rate_per_visit(pred, ddi) == pytest.approx((1 + 1 / 6) / 2)
    gt = M.ground_truth_ddi_rate(pred, ddi)
    assert gt == {"pooled": pytest.approx(2 / 7), "per_visit": pytest.approx(7 / 12)}
    assert M.ddi_rate_per_visit(np.zeros((2, 4)), ddi) == 0.0


def test_multi_hot_counts_and_drops_unknown_codes(caplog):
    from leader_kedro.contracts import multi_hot

    y, unknown = multi_hot([["B"], ["A", "B"]], ["A", "B"])
    assert y.tolist() == [[0, 1], [1, 1]] and unknown == 0
    y, unknown = multi_hot([["Z", "A"], ["Z"]], ["A", "B"], what="samples_test.target")
    assert y.tolist() == [[1, 0], [0, 0]] and unknown == 2
    assert "samples_test.target: 2 code(s) outside the vocabulary" in caplog.text


def test_metrics_at_threshold_keys():
    y, p = _random_case(1)
    ddi = np.ones((12, 12)) - np.eye(12)
    out = M.metrics_at_threshold(y, p, 0.5, ddi)
    assert {
        "jaccard",
        "prauc",
        "f1",
        "precision",
        "recall",
        "n_med",
        "ddi_rate",
        "ddi_rate_per_visit",
    } <= set(out)
    assert out["ddi_rate"] == pytest.approx(1.0)
