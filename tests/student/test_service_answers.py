"""The registered model's answers, built for a whole request at once, say per record what a
record-by-record reading of it says: the top-k classes in order, the interacting pairs among them,
and every code and profile value the model does not know (all visits, not only its window)."""

import math

import numpy as np
import pytest
import torch
from tiny_cohort import DIAGS, MEDS, NAMES, PROCS, PROFILE

from leader_kedro.student.model import LeaderStudent, StudentBundle, make_config
from leader_kedro.student.service import (
    LeaderStudentService,
    PatientRecommendations,
    PatientRecord,
)

VOCAB = {
    "medication": MEDS,
    "diagnosis": DIAGS,
    "procedure": PROCS,
    "tokens": ["[PAD]", "[CLS]", "[MASK]"]
    + [f"M_{m}" for m in MEDS]
    + [f"D_{d}" for d in DIAGS]
    + [f"P_{p}" for p in PROCS],
    "profile": PROFILE,
    "age_bins": [18, 30, 40, 50, 60, 70, 80, 90],
}
DDI = [[MEDS[0], MEDS[1]], [MEDS[2], MEDS[5]], [MEDS[3], MEDS[4]]]


def random_records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def visit(codes, p_unknown):
        out = [str(c) for c in rng.choice(codes, size=int(rng.integers(0, 4)), replace=False)]
        return out + (["NOT-A-CODE"] * int(rng.integers(1, 3)) if rng.random() < p_unknown else [])

    records = []
    for _ in range(n):
        n_vis = int(rng.choice([1, 2, 3, 14]))  # 14 > max_visits: codes outside the window too
        record = {
            "diagnoses": [visit(DIAGS, 0.3) for _ in range(n_vis)],
            "procedures": [visit(PROCS, 0.2) for _ in range(n_vis)],
            "medications": [visit(MEDS, 0.2) for _ in range(n_vis - 1)],
            "top_k": int(rng.choice([0, 1, 3, 8])),
            "age": float(rng.integers(1, 99)),
        }
        for field, values in PROFILE.items():
            pick = rng.random()
            if pick < 0.6:
                record[field] = str(rng.choice(values))
            elif pick < 0.8:
                record[field] = "never seen"
        records.append(record)
    return records


@pytest.fixture(scope="module")
def service():
    cfg = make_config(VOCAB, {"teacher_hidden_size": 8, "hidden_size": 16, "n_heads": 2})
    torch.manual_seed(0)
    model = LeaderStudentService(top_k=3)
    model.bundle = StudentBundle(LeaderStudent(cfg).eval(), cfg, VOCAB, NAMES)
    model.ddi = DDI
    return model


def test_answers_match_a_record_by_record_reading(service):
    records = random_records(40)
    answers = service.predict(None, records)
    assert len(answers) == len(records)
    assert all(isinstance(a, PatientRecommendations) for a in answers)
    pairs = {frozenset(p) for p in DDI}
    encoder = service.bundle.encoder
    for i, (record, answer) in enumerate(zip(records, answers, strict=True)):
        assert answer.row == i
        k = record["top_k"] or len(MEDS)
        recs = answer.recommendations
        assert [r.rank for r in recs] == list(range(1, k + 1))
        assert all(r.name == NAMES["medication"][r.atc3] for r in recs)
        p = [r.probability for r in recs]
        assert p == sorted(p, reverse=True) and all(0.0 < x < 1.0 for x in p)
        top = [r.atc3 for r in recs]
        expected_pairs = {
            frozenset((a, b)) for j, a in enumerate(top) for b in top[j + 1 :]
        } & pairs
        assert {frozenset((w.atc3_a, w.atc3_b)) for w in answer.ddi_warnings} == expected_pairs
        for w in answer.ddi_warnings:  # the higher-ranked class first
            assert top.index(w.atc3_a) < top.index(w.atc3_b)
        for attr, kind in (
            ("diagnoses", "diagnosis"),
            ("procedures", "procedure"),
            ("medications", "medication"),
        ):
            unknown = sum(c not in encoder.lookup[kind] for v in record[attr] for c in v)
            assert getattr(answer.unknown_codes, attr) == unknown, (i, attr)
        unseen = [f for f in PROFILE if f in record and record[f] not in PROFILE[f]]
        assert answer.unknown_codes.profile_fields == unseen
    totals = [
        sum(getattr(a.unknown_codes, t) for a in answers) for t in ("diagnoses", "procedures")
    ]
    assert min(totals) > 0 and any(a.unknown_codes.profile_fields for a in answers)


def test_a_request_scores_each_record_as_if_it_were_alone(service):
    records = random_records(12, seed=3)
    together = service.predict(None, records)
    for i, record in enumerate(records):
        alone = service.predict(None, [record])[0]
        assert alone.model_dump(exclude={"row", "recommendations"}) == together[i].model_dump(
            exclude={"row", "recommendations"}
        )
        for a, b in zip(alone.recommendations, together[i].recommendations, strict=True):
            assert (a.rank, a.atc3, a.name) == (b.rank, b.atc3, b.name)
            assert math.isclose(a.probability, b.probability, abs_tol=1e-6)


def test_records_may_come_as_objects_or_dicts(service):
    records = random_records(5, seed=4)
    as_dicts = service.predict(None, records)
    as_objects = service.predict(None, [PatientRecord(**r) for r in records])
    assert as_dicts == as_objects
