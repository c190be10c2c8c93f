"""``python -m leader_kedro.bench student`` pieces on a tiny cohort: they run and report figures
for both implementations (the figures themselves are never asserted)."""

import pytest
import torch
from tiny_cohort import make_tiny_cohort

from leader_kedro.student import benchmark, legacy
from leader_kedro.student.model import LeaderStudent, StudentBundle
from leader_kedro.student.training import distill_config, model_config

PARAMS = {
    "model": {"hidden_size": 16, "n_heads": 2, "intermediate_size": 32},
    "training": {"batch_size": 16, "seed": 1, "progress": False, "workers": 2},
}


@pytest.fixture(scope="module")
def data():
    cohort = make_tiny_cohort(50, seed=4)
    data = {
        "samples_train": cohort["samples_train"],
        "samples_val": cohort["samples_val"],
        "samples_test": cohort["samples_test"],
        "vocab": cohort["vocab"],
        "code_names": cohort["code_names"],
        "teacher_features": None,
    }
    return data


def test_training_figures_before_and_after(data):
    cfg = distill_config(PARAMS)
    features, source = benchmark._features(data, 12)
    assert source == "random features of width 12"
    after = benchmark.training_after(cfg, data, features, epochs=1, workers=2)
    assert after["samples_per_s"] > 0 and after["train_samples"] == len(data["samples_train"])
    assert after["side_by_side"]["workers"] == 2
    assert len(after["side_by_side"]["per_student_samples_per_s"]) == 2
    before = benchmark.training_before(model_config(cfg, data["vocab"], 12), data, features, 1)
    assert before["samples_per_s"] > 0
    assert after["batch_size"] == PARAMS["training"]["batch_size"]


def test_table_shows_the_like_for_like_batch_when_the_configured_one_differs():
    """The old loop trained at batch 16; a different configured batch adds a batch-16 row."""
    result = {
        "before": {"training": {"samples_per_s": 100.0}},
        "after": {
            "training": {"samples_per_s": 300.0, "batch_size": 32},
            "training_at_legacy_batch": {"samples_per_s": 200.0, "batch_size": 16},
            "inference": {},
        },
    }
    lines = benchmark._table(result).splitlines()
    same = [x for x in lines if "batch 16 as before" in x]
    configured = [x for x in lines if "1 thread, batch 32" in x]
    assert len(same) == 1 and same[0].split()[-1] == "2.0x"
    assert len(configured) == 1 and configured[0].split()[-1] == "3.0x"
    del result["after"]["training_at_legacy_batch"]
    assert "as before" not in benchmark._table(result)


def test_inference_figures_for_both_implementations_and_the_table(data, tmp_path):
    cfg = model_config(distill_config(PARAMS), data["vocab"], 12)
    torch.manual_seed(0)
    old = legacy.LeaderStudent(cfg).eval()
    new = LeaderStudent(cfg)
    new.load_state_dict(old.state_dict())
    after = StudentBundle(new, cfg, data["vocab"], data["code_names"])
    before = StudentBundle(new, cfg, data["vocab"], data["code_names"])
    before.module = old
    samples = data["samples_test"].reset_index(drop=True)
    result = {"after": {"training": {"samples_per_s": 2.0}}, "before": {"training": {}}}
    for name, bundle in (("after", after), ("before", before)):
        (tmp_path / name).mkdir()
        paths = benchmark.predictors(bundle, samples, name, tmp_path / name, signature=None)
        assert set(paths) == {"module", "pyfunc"}
        result[name]["inference"] = {}
        for path in paths:
            figures = benchmark.inference(
                paths, bundle.n_parameters, len(samples), (1, 4), 3, 8, 0.0, f"{name}:{path}"
            )
            assert figures["latency_ms_p50"] > 0 and set(figures["throughput"]) == {"1", "4"}
            result[name]["inference"][path] = figures
    table = benchmark._table(result)
    assert "pyfunc: latency p50 (ms, batch 1)" in table and "speed-up" in table
