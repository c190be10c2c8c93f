"""The paired, patient-level bootstrap over seeds (evaluation/paired.py), on constructed data."""

import json

import numpy as np
import pandas as pd
import pytest

from leader_kedro import contracts as C
from leader_kedro.evaluation import paired as P

MEDS = ["A", "B", "C", "D", "E", "F"]
VOCAB = {"medication": MEDS}
ROW_KEYS = {
    "comparison",
    "model_a",
    "model_b",
    "group",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "excludes_zero",
    "n_seeds",
    "n_patients",
    "n_samples",
    "rounds",
}


def _samples(n_patients=20, seed=0):
    """Test samples, every-visit style: some patients have two samples (a first visit without
    history and a later one), so patients and samples differ."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(n_patients):
        n = 2 if pid % 2 else 1
        for k in range(n):
            target = sorted(rng.choice(MEDS, size=int(rng.integers(1, 4)), replace=False))
            dx = [["d_common"]] * k + [["d_rare" if pid % 3 == 0 else "d_common"]]
            rows.append(
                {
                    "sample_id": f"{pid}_{k}",
                    "subject_id": 1000 + pid,
                    "n_past": k,
                    "diagnoses": dx,
                    "medications": [["A"]] * k,
                    "target": list(target),
                }
            )
    return pd.DataFrame(rows)


def _train():
    """Train samples: 'd_common' seen 10 times, 'd_rare' once."""
    rows = [
        {"sample_id": f"t{i}", "subject_id": i, "n_past": 0, "diagnoses": [["d_common"]]}
        for i in range(10)
    ]
    rows.append({"sample_id": "t10", "subject_id": 10, "n_past": 0, "diagnoses": [["d_rare"]]})
    return pd.DataFrame(rows)


def _labels(samples):
    y, _ = C.label_matrix(samples, VOCAB)
    return y


def _perfect(samples):
    """Labels ranked first: average precision 1 on every sample."""
    return 0.2 + 0.7 * _labels(samples)


def _worse(samples):
    """A negative label ranked first on every sample: average precision < 1 on every sample."""
    y = _labels(samples)
    prob = 0.2 + 0.5 * y
    first_negative = np.argmin(y, axis=1)
    prob[np.arange(len(y)), first_negative] = 0.95
    return prob


def _table(samples, prob):
    return C.predictions_frame(samples["sample_id"].tolist(), prob, MEDS)


def _seed_table(samples, model, probs_by_seed):
    return pd.concat(
        [
            C.seed_predictions_frame(model, s, split, samples["sample_id"].tolist(), prob, MEDS)
            for s, prob in probs_by_seed.items()
            for split in ("val", "test")
        ],
        ignore_index=True,
    )


def _rows(doc, comparison=None, group=None):
    return [
        r
        for r in doc["rows"]
        if (comparison is None or r["comparison"] == comparison)
        and (group is None or r["group"] == group)
    ]


def test_better_on_every_sample_gives_an_interval_above_zero():
    s = _samples()
    seeds = _seed_table(s, "student", {1: _perfect(s), 2: _perfect(s), 3: _perfect(s)})
    doc = P.paired_comparisons(
        s,
        VOCAB,
        seeds,
        {"teacher": _table(s, _worse(s))},
        {"rounds": 300, "comparisons": [["student", "teacher"], ["teacher", "student"]]},
        samples_train=_train(),
    )
    rows = _rows(doc, "student - teacher")
    assert {r["group"] for r in rows} == {"overall", "single_visit", "multi_visit", "rare_dx"}
    for r in rows:
        assert r["mean"] > 0 and r["ci_low"] > 0 and r["excludes_zero"], r
    for r in _rows(doc, "teacher - student"):  # the other direction: below zero
        assert r["ci_high"] < 0 and r["excludes_zero"]


def test_identical_models_give_zero_and_a_zero_interval():
    s = _samples()
    rng = np.random.default_rng(3)
    probs = {seed: rng.random((len(s), len(MEDS))) for seed in (7, 8, 9)}
    seeds = pd.concat(
        [_seed_table(s, "student", probs), _seed_table(s, "student_no_kd", probs)],
        ignore_index=True,
    )
    one = rng.random((len(s), len(MEDS)))
    tables = {"teacher": _table(s, one), "baseline_logreg": _table(s, one)}
    cfg = {
        "rounds": 200,
        "comparisons": [["student", "student_no_kd"], ["teacher", "baseline_logreg"]],
    }
    doc = P.paired_comparisons(s, VOCAB, seeds, tables, cfg, samples_train=_train())
    assert len(doc["rows"]) == 8
    for r in doc["rows"]:
        assert (r["mean"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0), r
        assert r["excludes_zero"] is False


def test_resampling_is_by_patient():
    """Each patient has two samples whose differences cancel (A is perfect on one, B on the
    other, same labels). Drawing patients keeps the two together, so every round is 0; drawing
    samples one by one would not."""
    s = _samples(n_patients=15)
    s = s[s["subject_id"] % 2 == 1].reset_index(drop=True)  # the two-sample patients
    first = s["n_past"].to_numpy() == 0
    s.loc[~first, "target"] = s.loc[first, "target"].to_numpy()  # same labels within a patient
    perfect, worse = _perfect(s), _worse(s)
    a = np.where(first[:, None], perfect, worse)
    b = np.where(first[:, None], worse, perfect)
    doc = P.paired_comparisons(
        s,
        VOCAB,
        None,
        {"teacher": _table(s, a), "baseline_logreg": _table(s, b)},
        {"rounds": 500, "groups": ["overall"], "comparisons": [["teacher", "baseline_logreg"]]},
    )
    (row,) = doc["rows"]
    assert row["n_patients"] == len(s) // 2 and row["n_samples"] == len(s)
    assert abs(row["mean"]) < 1e-12
    assert abs(row["ci_low"]) < 1e-12 and abs(row["ci_high"]) < 1e-12
    # the per-sample differences are not zero: one sample per "patient" gives a real spread
    y = _labels(s).astype(bool)
    from leader_kedro.evaluation.metrics import average_precision_per_sample as ap

    sa, sb = ap(y, a)[None, :], ap(y, b)[None, :]
    assert np.abs(sa - sb).min() > 0.1
    alone = np.arange(len(s))
    counts = P.patient_draws(len(s), 500, 42)
    ones = np.ones((500, 1))
    spread = P.bootstrap_differences(sa, sb, alone, counts, ones, ones)
    assert spread.max() - spread.min() > 0.05


def test_patient_draws_count_whole_patients():
    counts = P.patient_draws(30, 100, seed=1)
    assert counts.shape == (100, 30) and (counts.sum(axis=1) == 30).all()
    # a patient drawn k times brings each of its samples k times: the weights of a patient's
    # samples are equal in every round
    patient = np.array([0, 0, 1, 2, 2, 2])
    sa = np.array([[1.0, 0.0, 0.5, 0.2, 0.2, 0.2]])
    sb = np.zeros_like(sa)
    one = np.ones((4, 1))
    c = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [1, 1, 1]])
    got = P.bootstrap_differences(sa, sb, patient, c, one, one)
    np.testing.assert_allclose(got, [0.5, 0.5, 0.2, (1.0 + 0.5 + 0.6) / 6])


def test_one_seed_and_multi_seed_models():
    s = _samples()
    rng = np.random.default_rng(5)
    good, bad = _perfect(s), _worse(s)
    student = {42: good, 43: bad, 44: good}
    seeds = _seed_table(s, "student", student)
    tables = {"teacher": _table(s, bad), "student": _table(s, rng.random(bad.shape))}
    cfg = {"rounds": 400, "comparisons": [["student", "teacher"]]}
    doc = P.paired_comparisons(s, VOCAB, seeds, tables, cfg, samples_train=_train())
    # the student's seeds come from the seed table, not from its one table
    assert doc["models"]["student"] == {"source": "student_seed_predictions", "seeds": [42, 43, 44]}
    assert doc["models"]["teacher"] == {"source": "teacher_predictions_test", "seeds": None}
    row = _rows(doc, group="overall")[0]
    assert row["n_seeds"] == {"student": 3, "teacher": 1}
    y = _labels(s).astype(bool)
    from leader_kedro.evaluation.metrics import average_precision_per_sample as ap

    want = np.mean((2 * ap(y, good) + ap(y, bad)) / 3 - ap(y, bad))
    assert row["mean"] == pytest.approx(want)
    # one patient: the interval comes from the seed draws alone (some rounds draw seed 43 only)
    one = s[s["subject_id"] == 1001].reset_index(drop=True)
    doc1 = P.paired_comparisons(
        one,
        VOCAB,
        seeds[seeds["sample_id"].isin(one["sample_id"])],
        {"teacher": _table(one, bad[s["subject_id"] == 1001])},
        {"rounds": 400, "groups": ["overall"], "comparisons": [["student", "teacher"]]},
    )
    (r1,) = doc1["rows"]
    assert r1["n_patients"] == 1 and r1["ci_low"] == pytest.approx(0.0) and r1["ci_high"] > 0
    # a one-seed model always uses its seed; the same seed list gives the same (paired) draws
    assert (P.seed_draws(("one table",), 1, 50, 0) == 1).all()
    same = P.seed_draws((1, 2, 3), 3, 50, 0)
    assert (same == P.seed_draws((1, 2, 3), 3, 50, 0)).all()
    assert (same.sum(axis=1) == 3).all() and not (same == 1).all()
    assert not (same == P.seed_draws((4, 5, 6), 3, 50, 0)).all()


def test_models_without_predictions_are_skipped_with_the_reason():
    s = _samples()
    seeds = _seed_table(s, "student", {1: _perfect(s)})
    empty = C.predictions_frame([], np.zeros((0, len(MEDS))), MEDS)
    tables = {
        "teacher": _table(s, _worse(s)),
        "baseline_logreg": _table(s, _worse(s)),
        "oracle": empty,
        "student_no_kd": empty,
    }
    doc = P.paired_comparisons(s, VOCAB, seeds, tables, {"rounds": 50}, samples_train=_train())
    skipped = {x["comparison"]: x["reason"] for x in doc["skipped"]}
    assert set(skipped) == {
        "student - student_no_kd",
        "teacher - student_no_kd",
        "student - student_shuffled_kd",
        "student - oracle",
    }
    assert "student_shuffled_kd" in skipped["student - student_shuffled_kd"]
    assert "not wired" in skipped["student - student_shuffled_kd"]
    assert "has no rows" in skipped["student - student_no_kd"]
    assert "MIMIC" in skipped["student - oracle"]
    assert {r["comparison"] for r in doc["rows"]} == {
        "student - teacher",
        "student - baseline_logreg",
    }
    # no model at all: every comparison skipped, no error
    bare = P.paired_comparisons(s, VOCAB, None, {}, {"rounds": 10})
    assert bare["rows"] == [] and len(bare["skipped"]) == len(P.DEFAULT_COMPARISONS)


def test_groups_sizes_and_the_rare_stratum():
    s = _samples()
    seeds = _seed_table(s, "student", {1: _perfect(s), 2: _worse(s)})
    tables = {"teacher": _table(s, _worse(s))}
    cfg = {"rounds": 50, "comparisons": [["student", "teacher"]]}
    doc = P.paired_comparisons(s, VOCAB, seeds, tables, cfg, samples_train=_train())
    masks = C.group_masks(s, C.diagnosis_counts(_train()), 5)
    for r in doc["rows"]:
        mask = masks[r["group"]]
        assert r["n_samples"] == mask.sum()
        assert r["n_patients"] == s.loc[mask, "subject_id"].nunique()
    by_group = {r["group"]: r for r in doc["rows"]}
    assert by_group["single_visit"]["n_patients"] == by_group["overall"]["n_patients"]
    assert by_group["multi_visit"]["n_samples"] < by_group["multi_visit"]["n_patients"] * 2
    assert 0 < by_group["rare_dx"]["n_samples"] < len(s)
    # without the train samples there are no rare-code counts: rare_dx is skipped, said why
    doc = P.paired_comparisons(s, VOCAB, seeds, tables, cfg)
    assert {r["group"] for r in doc["rows"]} == {"overall", "single_visit", "multi_visit"}
    assert [x["group"] for x in doc["skipped"]] == ["rare_dx"]
    # an empty group is skipped, not an error
    only_first = s[s["n_past"] == 0].reset_index(drop=True)
    seeds0 = seeds[seeds["sample_id"].isin(only_first["sample_id"])]
    doc = P.paired_comparisons(
        only_first,
        VOCAB,
        seeds0,
        {"teacher": _table(only_first, _worse(only_first))},
        cfg,
    )
    assert "multi_visit" in {x.get("group") for x in doc["skipped"]}


def test_same_seed_same_document_and_another_seed_another_interval():
    s = _samples()
    rng = np.random.default_rng(0)
    seeds = _seed_table(s, "student", {k: rng.random((len(s), len(MEDS))) for k in (1, 2, 3)})
    tables = {"teacher": _table(s, rng.random((len(s), len(MEDS))))}
    cfg = {"rounds": 200, "seed": 11, "comparisons": [["student", "teacher"]]}
    one = P.paired_comparisons(s, VOCAB, seeds, tables, cfg, samples_train=_train())
    two = P.paired_comparisons(s, VOCAB, seeds, tables, cfg, samples_train=_train())
    assert json.dumps(one) == json.dumps(two)
    other = P.paired_comparisons(
        s, VOCAB, seeds, tables, dict(cfg, seed=12), samples_train=_train()
    )
    assert [r["mean"] for r in other["rows"]] == [r["mean"] for r in one["rows"]]
    assert [r["ci_low"] for r in other["rows"]] != [r["ci_low"] for r in one["rows"]]


def test_bad_parameters_name_their_path():
    with pytest.raises(C.ParameterError, match=r"evaluate\.paired\.comparisons\[0\]"):
        P.paired_config({"comparisons": [["student"]]})
    with pytest.raises(C.ParameterError, match=r"evaluate\.paired\.level"):
        P.paired_config({"level": 1.5})
    with pytest.raises(C.ParameterError, match=r"evaluate\.paired\.groups"):
        P.paired_config({"groups": ["everyone"]})


def test_node_writes_the_documented_keys():
    from leader_kedro.pipelines.evaluate import nodes

    s = _samples()
    seeds = pd.concat(
        [
            _seed_table(s, "student", {1: _perfect(s), 2: _perfect(s)}),
            _seed_table(s, "student_no_kd", {1: _worse(s), 2: _perfect(s)}),
        ],
        ignore_index=True,
    )
    preds = {
        "teacher_test": _table(s, _worse(s)),
        "baseline_logreg_test": _table(s, _worse(s)),
        "oracle_test": C.predictions_frame([], np.zeros((0, len(MEDS))), MEDS),
    }
    params = {"seed": 3, "paired": {"rounds": 100, "seed": 3}}
    doc = nodes.paired_comparisons(_train(), s, VOCAB, seeds, params, **preds)
    json.dumps(doc, allow_nan=False)  # a plain JSON document
    assert {"metric", "rounds", "level", "rows", "skipped"} <= set(doc)
    assert (doc["metric"], doc["rounds"], doc["level"]) == ("prauc", 100, 0.95)
    assert doc["rows"] and all(set(r) == ROW_KEYS for r in doc["rows"])
    comparisons = {r["comparison"] for r in doc["rows"]}
    assert comparisons == {
        "student - student_no_kd",
        "teacher - student_no_kd",
        "student - teacher",
        "student - baseline_logreg",
    }
    assert {x["comparison"] for x in doc["skipped"]} == {
        "student - student_shuffled_kd",
        "student - oracle",
    }
    row = _rows(doc, "student - student_no_kd", "overall")[0]
    assert row["n_seeds"] == {"student": 2, "student_no_kd": 2} and row["rounds"] == 100
