"""Efficiency measurement on tiny real models (a tiny BERT teacher with MiniLM's tokenizer, a small student)."""

import pandas as pd
import pytest
from tiny_cohort import make_tiny_cohort, tiny_teacher  # noqa: E402

from leader_kedro.evaluation import efficiency  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from leader_kedro.student.model import LeaderStudent, StudentBundle, make_config

    cohort = make_tiny_cohort(n_patients=40, seed=0)
    vocab = cohort["vocab"]
    teacher = tiny_teacher(tmp_path_factory.mktemp("tiny_bert"), vocab["medication"])
    scfg = make_config(
        vocab, {"kd_enabled": False, "hidden_size": 16, "n_heads": 2, "intermediate_size": 32}
    )
    student = StudentBundle(LeaderStudent(scfg), scfg, vocab)
    samples = cohort["samples_test"]
    prompts = pd.DataFrame(
        {
            "sample_id": samples["sample_id"],
            "prompt": [
                f"Patient {s}: diagnoses {d[-1]}; procedures {p[-1]}."
                for s, d, p in zip(
                    samples["sample_id"], samples["diagnoses"], samples["procedures"], strict=True
                )
            ],
        }
    )
    return teacher, student, prompts, samples


def test_measure_returns_positive_figures(bundles):
    teacher, student, prompts, samples = bundles
    res = efficiency.measure(
        teacher,
        student,
        prompts,
        samples,
        batch_sizes=(1, 4),
        latency_samples=4,
        throughput_samples=8,
        warmup=1,
    )
    for side in ("teacher", "student"):
        r = res[side]
        assert r["latency_ms_p50"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"]
        assert r["throughput"]["1"] > 0 and r["throughput"]["4"] > 0
        assert r["n_parameters"] > 0 and r["weight_bytes"] > 0
        assert all(v >= 0 for v in r["peak_memory_bytes"].values())
    assert res["teacher"]["n_parameters"] > res["student"]["n_parameters"]
    assert res["ratios"]["parameters"] > 1 and res["ratios"]["throughput_b4"] > 0
    assert res["same_device"]
    table = efficiency.format_table(res)
    assert "latency p50" in table and "throughput" in table


def test_measure_rejects_misaligned_prompts(bundles):
    teacher, student, prompts, samples = bundles
    with pytest.raises(ValueError, match="same row order"):
        efficiency.measure(
            teacher, student, prompts.iloc[::-1], samples, latency_samples=2, throughput_samples=2
        )


def test_peak_rss_sees_an_allocation():
    import mmap

    import numpy as np

    size = 40 * 2**20
    with efficiency.PeakRss() as rss:
        # fresh pages from the kernel: a malloc'd block could reuse memory an earlier test freed
        # and the allocator kept resident, and then RSS would not grow
        block = mmap.mmap(-1, size)
        np.frombuffer(block, dtype=np.uint8)[:] = 1  # touch every page
    assert rss.growth > 10 * 2**20
    block.close()


def test_measure_one_cycles_the_samples_and_repeats_until_min_seconds():
    calls = []

    def predict(idx, bs):
        calls.append((list(idx), bs))

    res = efficiency.measure_one(
        "toy",
        predict,
        n_parameters=1,
        device="cpu",
        n_available=5,
        batch_sizes=(4,),
        latency_samples=3,
        throughput_samples=12,
        warmup=0,
        cycle=True,
        min_seconds=0.01,
        memory=False,
    )
    assert res["latency_samples"] == 3 and res["throughput_samples"] == 12
    thr = [idx for idx, bs in calls if bs == 4]
    assert thr[0] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # 12 samples from 5, wrapped
    assert len(thr) >= 1 and res["throughput"]["4"] > 0
    assert res["peak_memory_bytes"] == {}


def test_student_predictors_cover_the_module_and_the_served_model(bundles):
    _, student, _, samples = bundles
    paths = efficiency.student_predictors(student, samples)
    probs = paths["module"]([0, 1, 2], 2)
    assert probs.shape == (3, len(student.vocab["medication"]))
    ranked = paths["pyfunc"]([0, 1, 2], 2)
    assert len(ranked) == 2  # two requests: a batch of 2 and a batch of 1
    # the registered model's answers (LeaderStudentService): one per record, in request order
    assert [a.row for a in ranked[0]] == [0, 1] and [a.row for a in ranked[1]] == [0]
    meds = set(student.vocab["medication"])
    for answer in ranked[0]:
        ranks = [r.rank for r in answer.recommendations]
        assert ranks == list(range(1, len(ranks) + 1)) and ranks
        assert all(r.atc3 in meds for r in answer.recommendations)
    # the same patients through the module: the service ranks the module's probabilities
    top = probs[0].argmax()
    assert ranked[0][0].recommendations[0].atc3 == student.vocab["medication"][top]
