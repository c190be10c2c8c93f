"""The teacher's seeds (``teacher.n_seeds``, ``teacher_seed_predictions``) in the paired comparisons."""

import numpy as np
import pandas as pd
import pytest
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro import contracts as C
from leader_kedro.evaluation import metrics as M
from leader_kedro.evaluation import paired as P


@pytest.fixture(scope="module")
def cohort() -> dict:
    return make_tiny_cohort(60, seed=3)


def _prob(samples, vocab, seed, noise=0.6):
    y, _ = C.label_matrix(samples, vocab)
    return np.clip(0.5 * y + noise * np.random.default_rng(seed).random(y.shape), 0, 1)


#: each model's probabilities come from its own random stream: seed + this offset
OFFSET = {"student": 0, "teacher": 1000}


def _long(c, model, seeds):
    """``model``'s rows of a seed table: each seed's val and test probabilities."""
    meds = c["vocab"]["medication"]
    return pd.concat(
        [
            C.seed_predictions_frame(
                model,
                s,
                split,
                c[f"samples_{split}"]["sample_id"].tolist(),
                _prob(c[f"samples_{split}"], c["vocab"], s + OFFSET[model]),
                meds,
            )
            for s in seeds
            for split in ("val", "test")
        ],
        ignore_index=True,
    )


def _tables(c, teacher_seed):
    """The one-table models; the teacher's table is its first seed's test rows."""
    meds = c["vocab"]["medication"]
    test = c["samples_test"]
    return {
        "teacher": C.predictions_frame(
            test["sample_id"].tolist(), _prob(test, c["vocab"], teacher_seed + 1000), meds
        ),
        "baseline_logreg": C.predictions_frame(
            test["sample_id"].tolist(), _prob(test, c["vocab"], 99, noise=0.9), meds
        ),
    }


CFG = {
    "rounds": 200,
    "groups": ["overall", "multi_visit"],
    "comparisons": [["student", "teacher"], ["teacher", "baseline_logreg"]],
}


def _overall(doc, comparison):
    (row,) = [r for r in doc["rows"] if r["comparison"] == comparison and r["group"] == "overall"]
    return row


def test_two_teacher_seeds_count_as_two_in_the_paired_rows(cohort):
    c = cohort
    students = _long(c, "student", (42, 43, 44))
    teachers = _long(c, "teacher", (42, 43))
    doc = P.paired_comparisons(
        c["samples_test"],
        c["vocab"],
        students,
        _tables(c, 42),
        CFG,
        samples_train=c["samples_train"],
        teacher_seed_predictions=teachers,
    )
    assert doc["models"]["teacher"] == {"source": "teacher_seed_predictions", "seeds": [42, 43]}
    row = _overall(doc, "student - teacher")
    assert row["n_seeds"] == {"student": 3, "teacher": 2}
    assert _overall(doc, "teacher - baseline_logreg")["n_seeds"] == {
        "teacher": 2,
        "baseline_logreg": 1,
    }
    # the teacher's per-sample PRAUC is the mean over its two seeds
    test = c["samples_test"]
    y, _ = C.label_matrix(test, c["vocab"])
    keep = y.any(axis=1)

    def ap(seeds):
        per = [M.average_precision_per_sample(y, _prob(test, c["vocab"], s))[keep] for s in seeds]
        return np.mean(per, axis=0)

    want = float(np.mean(ap((42, 43, 44)) - ap((1042, 1043))))
    assert row["mean"] == pytest.approx(want)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]


@pytest.mark.parametrize("given", ["absent", "empty", "one seed"])
def test_without_teacher_seeds_the_teacher_is_its_table_as_before(cohort, given):
    c = cohort
    students = _long(c, "student", (42, 43, 44))
    teachers = {
        "absent": None,
        "empty": _long(c, "teacher", (42,)).iloc[:0],
        "one seed": _long(c, "teacher", (42,)),
    }[given]
    args = (c["samples_test"], c["vocab"], students, _tables(c, 42), CFG)
    before = P.paired_comparisons(*args, samples_train=c["samples_train"])
    doc = P.paired_comparisons(
        *args, samples_train=c["samples_train"], teacher_seed_predictions=teachers
    )
    assert doc["models"]["teacher"] == {"source": "teacher_predictions_test", "seeds": None}
    assert _overall(doc, "student - teacher")["n_seeds"] == {"student": 3, "teacher": 1}
    assert doc["rows"] == before["rows"]


def test_teacher_seeds_without_a_teacher_table_are_used_even_when_one(cohort):
    c = cohort
    tables = {k: v for k, v in _tables(c, 42).items() if k != "teacher"}
    doc = P.paired_comparisons(
        c["samples_test"],
        c["vocab"],
        _long(c, "student", (42,)),
        tables,
        CFG,
        teacher_seed_predictions=_long(c, "teacher", (42,)),
    )
    assert doc["models"]["teacher"] == {"source": "teacher_seed_predictions", "seeds": [42]}
    assert not [s for s in doc["skipped"] if "group" not in s]  # no comparison left out


def test_the_node_and_the_pipeline_wire_the_teacher_seeds(cohort):
    from leader_kedro.pipelines.evaluate import create_pipeline, nodes
    from leader_kedro.pipelines.teacher import create_pipeline as teacher_pipeline

    c = cohort
    params = {"seed": 1, "paired": CFG}
    preds = {f"{m}_test": t for m, t in _tables(c, 42).items()}
    doc = nodes.paired_comparisons(
        c["samples_train"],
        c["samples_test"],
        c["vocab"],
        _long(c, "student", (42, 43)),
        params,
        teacher_seed_predictions=_long(c, "teacher", (42, 43)),
        **preds,
    )
    assert _overall(doc, "student - teacher")["n_seeds"] == {"student": 2, "teacher": 2}
    # the input is optional for the node function: without it, the teacher is its table
    students = _long(c, "student", (42, 43))
    doc1 = nodes.paired_comparisons(
        c["samples_train"], c["samples_test"], c["vocab"], students, params, **preds
    )
    assert _overall(doc1, "student - teacher")["n_seeds"] == {"student": 2, "teacher": 1}
    # wired with the teacher, made by the teacher stage beside teacher_predictions_test
    assert "teacher_seed_predictions" in create_pipeline().inputs()
    without = create_pipeline(models=("student", "baseline_logreg"), with_efficiency=False)
    assert "teacher_seed_predictions" not in without.inputs()
    made = teacher_pipeline().all_outputs()
    assert {"teacher_predictions_test", "teacher_seed_predictions"} <= made
