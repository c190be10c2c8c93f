"""Protocols, rounds, groups, threshold tuning and DDI post-processing."""

import numpy as np
import pandas as pd
import pytest
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro import contracts as C  # noqa: E402
from leader_kedro.evaluation import metrics as M  # noqa: E402
from leader_kedro.evaluation import protocols as E  # noqa: E402


@pytest.fixture(scope="module")
def cohort():
    return make_tiny_cohort(n_patients=80, seed=1)


def _noisy_predictions(samples, vocab, seed, noise=0.35):
    rng = np.random.default_rng(seed)
    y, _ = C.label_matrix(samples, vocab)
    prob = np.clip(0.6 * y + noise * rng.random(y.shape), 0, 1)
    return C.predictions_frame(samples["sample_id"].tolist(), prob, vocab["medication"])


def test_round_indices_without_and_with_replacement():
    rounds = E.round_indices(100, rounds=10, fraction=0.8, replace=False, seed=3)
    assert len(rounds) == 10
    for idx in rounds:
        assert len(idx) == 80 and len(set(idx.tolist())) == 80
    boot = E.round_indices(100, rounds=10, fraction=0.8, replace=True, seed=3)
    assert all(len(idx) == 80 for idx in boot)
    assert any(len(set(idx.tolist())) < 80 for idx in boot)  # duplicates: with replacement
    again = E.round_indices(100, rounds=10, fraction=0.8, replace=True, seed=3)
    assert all((a == b).all() for a, b in zip(boot, again, strict=True))


def test_summarise_rounds():
    s = E.summarise_rounds([1.0, 2.0, 3.0])
    assert s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(np.std([1, 2, 3]))
    assert 1.0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 3.0


def test_patient_average_weights_patients_not_visits():
    y = np.array([[1, 0], [1, 0], [1, 0]])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # patient 1 perfect twice, patient 2 wrong
    proto = {
        "rounds": 1,
        "fraction": 1.0,
        "replace": False,
        "average": "patient",
        "ddi_in_rounds": False,
    }
    res = E.evaluate_protocol(y, p, np.array([1, 1, 2]), proto, 0.5, None, seed=0)
    assert res["point"]["jaccard"] == pytest.approx(0.5)
    assert res["units"] == 2
    visit = dict(proto, average="visit")
    assert E.evaluate_protocol(y, p, np.array([1, 1, 2]), visit, 0.5, None, 0)["point"][
        "jaccard"
    ] == pytest.approx(2 / 3)


def test_tune_threshold_picks_val_optimum():
    # the positive label always has prob 0.6, the negative 0.4: any threshold in [0.4, 0.6) is perfect
    y = np.array([[1, 0]] * 5)
    p = np.array([[0.6, 0.4]] * 5)
    res = E.tune_threshold(y, p, [0.1, 0.3, 0.45, 0.5, 0.7], "jaccard")
    assert res["threshold"] == 0.45 and res["score"] == pytest.approx(1.0)
    assert E.tune_threshold(y, p, [0.1, 0.5, 0.7], "f1")["threshold"] == 0.5
    with pytest.raises(ValueError, match="objective"):
        E.tune_threshold(y, p, [0.5], "auc")
    assert E.threshold_grid({"start": 0.1, "stop": 0.3, "step": 0.1}) == [0.1, 0.2, 0.3]


def test_groups_and_sizes(cohort):
    test = cohort["samples_test"]
    sizes = E.group_sizes(test)
    n_single = int((test["n_past"] == 0).sum())
    assert sizes["overall"]["samples"] == len(test)
    assert sizes["single_visit"]["samples"] == n_single
    assert sizes["multi_visit"]["samples"] == len(test) - n_single
    assert 0 < n_single < len(test)


def test_prediction_matrix_checks(cohort):
    vocab, test = cohort["vocab"], cohort["samples_test"]
    pred = _noisy_predictions(test, vocab, 0)
    shuffled = pred.sample(frac=1.0, random_state=0)
    meds = vocab["medication"]
    np.testing.assert_allclose(
        C.prediction_matrix(shuffled, test, meds, "x"), C.prediction_matrix(pred, test, meds, "x")
    )
    with pytest.raises(ValueError, match="student_predictions_test.*medication column"):
        C.prediction_matrix(pred.drop(columns=[meds[0]]), test, meds, "student_predictions_test")
    with pytest.raises(ValueError, match="sample_id does not match"):
        C.prediction_matrix(pred.iloc[1:], test, vocab["medication"], "p")
    bad = pred.copy()
    bad[vocab["medication"][0]] = 2.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.prediction_matrix(bad, test, vocab["medication"], "p")


def test_ddi_postprocess_monotone_and_only_removes():
    rng = np.random.default_rng(0)
    m = 10
    ddi = (rng.random((m, m)) < 0.3).astype(float)
    ddi = np.triu(ddi, 1)
    ddi = ddi + ddi.T
    prob = rng.random((50, m))
    y = (rng.random((50, m)) < 0.4).astype(int)
    base = prob > 0.3
    targets = [0.2, 0.15, 0.1, 0.05, 0.0]
    rows = E.ddi_tradeoff(prob, y, 0.3, ddi, targets)
    rates = [r["ddi_rate"] for r in rows]
    assert M.ddi_rate(base, ddi) > 0.2
    for r in rows:
        assert r["ddi_rate"] <= r["target"] + 1e-12
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert rows[-1]["ddi_rate"] == 0.0
    assert all(a["n_med"] >= b["n_med"] for a, b in zip(rows, rows[1:], strict=False))
    for t in targets:
        post = E.ddi_postprocess(prob, 0.3, ddi, t)
        assert not (post & ~base).any()  # never adds a drug
    # removed drugs are the lower-probability members: every kept drug of a sample beats the removed ones
    # that interacted with it
    post = E.ddi_postprocess(prob, 0.3, ddi, 0.0)
    for i in range(len(prob)):
        for j in np.flatnonzero(base[i] & ~post[i]):
            partners = np.flatnonzero(base[i] & (ddi[j] > 0))
            assert any(prob[i, k] >= prob[i, j] for k in partners)


def test_evaluate_models_document(cohort):
    vocab = cohort["vocab"]
    val, test = cohort["samples_val"], cohort["samples_test"]
    preds = {
        "good": (_noisy_predictions(val, vocab, 1, 0.3), _noisy_predictions(test, vocab, 2, 0.3)),
        "bad": (_noisy_predictions(val, vocab, 3, 2.0), _noisy_predictions(test, vocab, 4, 2.0)),
    }
    tuning = {"objective": "jaccard", "grid": {"start": 0.05, "stop": 0.95, "step": 0.05}}
    post = {"enabled": True, "targets": [0.1, 0.0], "protocol": "tuned", "models": ["good"]}
    cfg = E.evaluate_config({"threshold_tuning": tuning, "ddi_postprocess": post, "seed": 7})
    doc = E.evaluate_models(preds, val, test, vocab, cohort["ddi_adjacency"], cfg)
    again = E.evaluate_models(preds, val, test, vocab, cohort["ddi_adjacency"], cfg)
    assert doc == again  # seeded, reproducible
    assert set(doc["models"]) == {"good", "bad"}
    assert set(doc["protocols"]) == {"leader", "safedrug", "tuned"}
    assert all("label" in p for p in doc["protocols"].values())
    g = doc["models"]["good"]
    assert (
        g["leader"]["overall"]["threshold"] == 0.3 and g["safedrug"]["overall"]["threshold"] == 0.5
    )
    assert g["tuned"]["overall"]["threshold"] == doc["thresholds"]["good"]["threshold"]
    assert (
        "ddi_rate" in g["safedrug"]["overall"]["rounds"]
        and "ddi_rate" not in g["leader"]["overall"]["rounds"]
    )
    assert (
        g["leader"]["overall"]["rounds"]["prauc"]["mean"]
        > doc["models"]["bad"]["leader"]["overall"]["rounds"]["prauc"]["mean"]
    )
    assert doc["groups"]["single_visit"]["samples"] + doc["groups"]["multi_visit"][
        "samples"
    ] == len(test)
    y, _ = C.label_matrix(test, vocab)
    assert doc["ground_truth_ddi"]["pooled"] == pytest.approx(
        M.ddi_rate(y, cohort["ddi_adjacency"].to_numpy())
    )
    curve = doc["postprocess"]["good"]["curve"]
    assert curve[0]["target"] is None and [c["target"] for c in curve[1:]] == [0.1, 0.0]
    assert "bad" not in doc["postprocess"]
    flat = E.flat_metrics(doc)
    assert "good.leader.overall.prauc" in flat and "ground_truth.ddi_rate_pooled" in flat
    # csv-loaded adjacency (first column = index) works the same
    csv_like = cohort["ddi_adjacency"].reset_index().rename(columns={"index": "Unnamed: 0"})
    doc2 = E.evaluate_models(preds, val, test, vocab, csv_like, cfg)
    assert doc2["ground_truth_ddi"] == doc["ground_truth_ddi"]


def test_ddi_adjacency_error_names_the_table(cohort):
    vocab = cohort["vocab"]
    bad = pd.DataFrame(0, index=["X"], columns=["X"])
    preds = {
        "m": (
            _noisy_predictions(cohort["samples_val"], vocab, 0),
            _noisy_predictions(cohort["samples_test"], vocab, 0),
        )
    }
    with pytest.raises(ValueError, match="ddi_adjacency"):
        E.evaluate_models(preds, cohort["samples_val"], cohort["samples_test"], vocab, bad)


def test_rare_code_strata_count_train_visits_once_per_patient():
    samples_train = pd.DataFrame(
        {
            "subject_id": [1, 1, 2],
            "n_past": [0, 1, 0],  # every_visit: patient 1's second sample repeats its first visit
            "diagnoses": [[["A", "B"]], [["A", "B"], ["A", "A"]], [["B"]]],
        }
    )
    counts = C.diagnosis_counts(samples_train)
    assert counts == {"A": 2, "B": 2}  # visits, not samples; a code twice in a visit counts once
    test = pd.DataFrame({"n_past": [0, 1, 0], "diagnoses": [[["A"]], [["Z"], ["A"]], [["B", "C"]]]})
    masks = C.group_masks(test, counts, max_count=1)
    assert masks["rare_dx"].tolist() == [False, False, True]  # C never seen; Z only in history
    assert (masks["common_dx"] == ~masks["rare_dx"]).all()
    assert set(C.group_masks(test)) == {"overall", "single_visit", "multi_visit"}


def test_evaluate_models_reports_rare_code_strata(cohort):
    vocab, val, test = cohort["vocab"], cohort["samples_val"], cohort["samples_test"]
    preds = {"m": (_noisy_predictions(val, vocab, 0), _noisy_predictions(test, vocab, 1))}
    cfg = E.evaluate_config({"seed": 0, "ddi_postprocess": {"enabled": False}})
    doc = E.evaluate_models(
        preds, val, test, vocab, None, cfg, samples_train=cohort["samples_train"]
    )
    sizes = doc["groups"]
    assert sizes["rare_dx"]["samples"] + sizes["common_dx"]["samples"] == len(test)
    assert doc["rare_code_max_count"] == 5
    flat = E.flat_metrics(doc)
    for group in ("rare_dx", "common_dx"):
        assert (f"m.leader.{group}.prauc" in flat) == (sizes[group]["samples"] > 0)
    without = E.evaluate_models(preds, val, test, vocab, None, cfg)
    assert "rare_dx" not in without["groups"]


def test_learning_curve_subsets_are_nested_and_seeded(cohort):
    from leader_kedro.evaluation.learning_curve import train_subsets

    train = cohort["samples_train"]
    subsets = train_subsets(train, [0.5, 0.1, 1.0], seed=3)
    assert list(subsets) == [0.1, 0.5, 1.0] and len(subsets[1.0]) == len(train)
    ids = [set(df["subject_id"]) for df in subsets.values()]
    assert ids[0] < ids[1] < ids[2]
    assert set(train_subsets(train, [0.5], seed=3)[0.5]["subject_id"]) == ids[1]
    assert set(train_subsets(train, [0.5], seed=4)[0.5]["subject_id"]) != ids[1]
    with pytest.raises(ValueError, match="fractions"):
        train_subsets(train, [0.0], seed=3)
