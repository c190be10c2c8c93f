"""The evaluate pipeline end to end on an in-memory catalog (tiny cohort, tiny real models)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_cohort import make_tiny_cohort, tiny_teacher  # noqa: E402

from leader_kedro import contracts as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _params(seed=0):
    text = (
        (ROOT / "conf" / "test" / "parameters_evaluate.yml")
        .read_text()
        .replace("${seed}", str(seed))
    )
    p = yaml.safe_load(text)["evaluate"]
    p["efficiency"].update(
        {
            "batch_sizes": [1, 4],
            "latency_samples": 2,
            "throughput_samples": 4,
            "warmup": 0,
            "num_threads": 1,
        }
    )
    return p


def _pred(samples, vocab, seed, noise):
    rng = np.random.default_rng(seed)
    y, _ = C.label_matrix(samples, vocab)
    return C.predictions_frame(
        samples["sample_id"].tolist(),
        np.clip(0.6 * y + noise * rng.random(y.shape), 0, 1),
        vocab["medication"],
    )


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from leader_kedro.pipelines.evaluate import create_pipeline
    from leader_kedro.student.model import LeaderStudent, StudentBundle, make_config

    c = make_tiny_cohort(n_patients=60, seed=5)
    vocab = c["vocab"]
    scfg = make_config(
        vocab, {"kd_enabled": False, "hidden_size": 16, "n_heads": 2, "intermediate_size": 32}
    )
    data = {
        "samples_train": c["samples_train"],
        "samples_val": c["samples_val"],
        "samples_test": c["samples_test"],
        "vocab": vocab,
        "ddi_adjacency": c["ddi_adjacency"],
        "params:evaluate": _params(),
        "ingest_report": {"source": "tiny", "cohort": {"patients": 60}},
        "node_timings": {
            "latest_run": "r",
            "runs": {"r": {"pipeline": "evaluate", "started_at": "t", "nodes": 6}},
            "nodes": {"evaluate_models": {"wall_s": 1.5, "started_s": 0.0, "run": "r"}},
        },
        "teacher_model": tiny_teacher(tmp_path_factory.mktemp("tiny_bert"), vocab["medication"]),
        "student_model": StudentBundle(LeaderStudent(scfg), scfg, vocab),
        "prompts_test": pd.DataFrame(
            {
                "sample_id": c["samples_test"]["sample_id"],
                "prompt": [f"visit {i}" for i in range(len(c["samples_test"]))],
            }
        ),
    }
    students = ("student", "student_no_kd", "student_no_align", "student_shuffled_kd")
    for k, m in enumerate(("teacher", *students, "oracle")):
        for split in ("val", "test"):
            data[f"{m}_predictions_{split}"] = _pred(
                c[f"samples_{split}"], vocab, 10 * k + len(split), 0.3 + 0.2 * k
            )
    # three seeds of the main student and its no-KD ablation (the long table of the distill stage)
    data["student_seed_predictions"] = pd.concat(
        [
            C.seed_predictions_frame(
                model,
                seed,
                split,
                c[f"samples_{split}"]["sample_id"].tolist(),
                _pred(c[f"samples_{split}"], vocab, 100 * seed + k, 0.3 + 0.2 * k)[
                    vocab["medication"]
                ].to_numpy(),
                vocab["medication"],
            )
            for k, model in enumerate(("student", "student_no_kd"))
            for seed in (1, 2, 3)
            for split in ("val", "test")
        ],
        ignore_index=True,
    )
    # teacher.n_seeds: 1 (the default): the teacher's seed table is its own prediction tables
    data["teacher_seed_predictions"] = pd.concat(
        [
            C.seed_predictions_frame(
                "teacher",
                0,
                split,
                data[f"teacher_predictions_{split}"]["sample_id"].tolist(),
                data[f"teacher_predictions_{split}"][vocab["medication"]].to_numpy(),
                vocab["medication"],
            )
            for split in ("val", "test")
        ],
        ignore_index=True,
    )
    pipeline = create_pipeline()
    catalog = DataCatalog(
        {name: MemoryDataset(value, copy_mode="assign") for name, value in data.items()}
    )

    class Kept(MemoryDataset):  # the runner releases intermediates; keep them for the asserts
        def _release(self) -> None:
            pass

    keep = {
        "metrics",
        "paired",
        "efficiency",
        "learning_curve",
        "baseline_logreg_predictions_test",
    }
    for out in pipeline.outputs() | keep:
        if out not in data:
            catalog[out] = Kept(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    return {
        name: catalog.load(name)
        for name in (
            "metrics",
            "paired",
            "efficiency",
            "learning_curve",
            "report",
            "plot_prauc_by_group",
            "baseline_logreg_predictions_test",
        )
    }, c


def test_pipeline_produces_report_and_metrics(run_outputs):
    out, c = run_outputs
    metrics = out["metrics"]
    assert list(metrics["models"]) == [
        "teacher",
        "student",
        "student_no_kd",
        "student_no_align",
        "student_shuffled_kd",
        "baseline_mostfreq",
        "baseline_logreg",
        "oracle",
    ]
    assert metrics["groups"]["overall"]["samples"] == len(c["samples_test"])
    rare = metrics["groups"]["rare_dx"]["samples"]  # the rare-code strata, for every model
    assert rare + metrics["groups"]["common_dx"]["samples"] == len(c["samples_test"])
    assert "rare_dx" in metrics["models"]["student"]["leader"]
    curve = out["learning_curve"]
    assert [r["fraction"] for r in curve["curve"]] == [0.25, 1.0] and curve["oracle"]
    assert curve["curve"][0]["train_samples"] < curve["curve"][1]["train_samples"]
    assert set(metrics["postprocess"]) == {"teacher", "student"}
    assert out["efficiency"]["enabled"] and out["efficiency"]["student"]["throughput"]["4"] > 0
    md = out["report"]
    assert "Multi-hot logistic regression" in md and "Efficiency: teacher vs student" in md
    assert "Oracle: the generator's true probabilities" in md and "rare dx" in md
    assert "logistic regression, 25% of train" in md
    assert "## Run time per node" in md and "| evaluate_models | 1.5 |" in md
    assert hasattr(out["plot_prauc_by_group"], "savefig")
    assert list(out["baseline_logreg_predictions_test"].columns) == [
        "sample_id",
        *c["vocab"]["medication"],
    ]


def test_pipeline_writes_the_paired_comparisons(run_outputs):
    from leader_kedro.pipelines.evaluate import create_pipeline

    pipeline = create_pipeline()
    assert "paired" in pipeline.all_outputs()
    assert {"student_seed_predictions", "teacher_seed_predictions"} <= pipeline.inputs()
    assert "paired" in next(n for n in pipeline.nodes if n.name == "make_report").inputs
    out, c = run_outputs
    paired = out["paired"]
    assert (paired["metric"], paired["rounds"], paired["level"]) == ("prauc", 1000, 0.95)
    rows = {(r["comparison"], r["group"]): r for r in paired["rows"]}
    row = rows[("student - student_no_kd", "overall")]
    assert row["n_seeds"] == {"student": 3, "student_no_kd": 3}
    assert row["n_samples"] == len(c["samples_test"])
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert rows[("student - teacher", "multi_visit")]["n_seeds"] == {"student": 3, "teacher": 1}
    # one teacher seed (teacher.n_seeds: 1): the teacher is its table, as before teacher seeds
    assert paired["models"]["teacher"] == {"source": "teacher_predictions_test", "seeds": None}
    assert {g for _, g in rows} | {s.get("group") for s in paired["skipped"]} >= {
        "overall",
        "single_visit",
        "multi_visit",
        "rare_dx",
    }
    assert ("student - oracle", "overall") in rows
    # no seed rows: a wired table is its one seed, else the comparison is skipped with the reason
    skipped = {s["comparison"] for s in paired["skipped"] if "group" not in s}
    assert skipped <= {"student - student_shuffled_kd"}
    md = out["report"]
    assert md.index("## Paired comparisons") < md.index("## Dataset")
    assert "`student` − `student_no_kd` | 3 / 3 |" in md


def test_unwired_model_is_a_clear_error():
    from leader_kedro.pipelines.evaluate import nodes

    c = make_tiny_cohort(n_patients=30, seed=1)
    params = dict(_params(), models=["teacher", "mystery"])
    preds = {f"teacher_{s}": _pred(c[f"samples_{s}"], c["vocab"], 0, 0.3) for s in ("val", "test")}
    with pytest.raises(ValueError, match="mystery"):
        nodes.evaluate_models(
            c["samples_val"], c["samples_test"], c["vocab"], c["ddi_adjacency"], params, **preds
        )


def test_oracle_without_rows_is_left_out():
    """A real MIMIC source: ingest writes the oracle tables without rows, evaluate leaves it out."""
    from leader_kedro.pipelines.evaluate import nodes

    c = make_tiny_cohort(n_patients=30, seed=1)
    meds = c["vocab"]["medication"]
    params = dict(_params(), models=["teacher", "oracle"])
    preds = {f"teacher_{s}": _pred(c[f"samples_{s}"], c["vocab"], 0, 0.3) for s in ("val", "test")}
    preds.update(
        {
            f"oracle_{s}": C.predictions_frame([], np.zeros((0, len(meds))), meds)
            for s in ("val", "test")
        }
    )
    doc = nodes.evaluate_models(
        c["samples_val"], c["samples_test"], c["vocab"], c["ddi_adjacency"], params, **preds
    )
    assert list(doc["models"]) == ["teacher"]


def test_pipeline_import_is_light():
    import subprocess

    code = (
        "import sys; import leader_kedro.pipelines.evaluate.pipeline; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sklearn', 'matplotlib') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
