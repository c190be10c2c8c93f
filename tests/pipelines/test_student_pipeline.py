"""The distill pipeline on an in-memory catalog: outputs, metrics, ablations, stale features."""

from pathlib import Path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from kedro.io import DataCatalog, MemoryDataset  # noqa: E402
from kedro.runner import SequentialRunner  # noqa: E402
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro.contracts import StaleFeaturesError  # noqa: E402
from leader_kedro.pipelines.distill import create_pipeline  # noqa: E402
from leader_kedro.teacher.features import (  # noqa: E402
    expected_fingerprint,
    standardisation_stats,
    with_standardisation,
)

PROJECT = Path(__file__).resolve().parents[2]
STUDENTS = ("student", "student_no_kd", "student_no_align", "student_shuffled_kd")


def tiny_params() -> dict:
    params = yaml.safe_load((PROJECT / "conf/test/parameters_distill.yml").read_text())["distill"]
    params["training"]["seed"] = 42
    return params


def base_params() -> dict:
    params = yaml.safe_load((PROJECT / "conf/base/parameters_distill.yml").read_text())["distill"]
    params["training"]["seed"] = 42
    return params


def make_inputs(
    ablations: bool = True, stale: bool = False, n_seeds: int = 1, workers: int = 1
) -> dict:
    cohort = make_tiny_cohort(60, seed=1)
    train, test = cohort["samples_train"], cohort["samples_test"]
    prompts = pd.DataFrame(
        {"sample_id": train["sample_id"], "prompt": [f"patient {s}" for s in train["sample_id"]]}
    )
    card = {
        "backbone": "tiny",
        "fingerprint": "abc123",
        "max_length": 64,
        "pooling": "mean",
        "hidden_size": 12,
    }
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(train), 12, generator=gen).to(torch.float16)
    features = {
        "sample_ids": list(train["sample_id"]),
        "hidden": hidden,
        "fingerprint": expected_fingerprint(card, prompts),
        "metadata": {"teacher_fingerprint": "abc123"},
    }
    # the train statistics in the metadata and fingerprint, as the features stage writes them
    features = with_standardisation(features, standardisation_stats(hidden), card, prompts)
    if stale:
        card = dict(card, fingerprint="retrained")
    rng = np.random.default_rng(0)
    teacher = pd.DataFrame(
        rng.uniform(size=(len(test), len(cohort["vocab"]["medication"]))),
        columns=cohort["vocab"]["medication"],
    )
    teacher.insert(0, "sample_id", test["sample_id"].astype(str))
    params = tiny_params()
    params["ablations"] = ablations
    params["training"].update(n_seeds=n_seeds, workers=workers)
    return {
        "samples_train": train,
        "samples_val": cohort["samples_val"],
        "samples_test": test,
        "vocab": cohort["vocab"],
        "code_names": cohort["code_names"],
        "ddi_adjacency": cohort["ddi_adjacency"],
        "teacher_features_train": features,
        "teacher_card": card,
        "prompts_train": prompts,
        "teacher_predictions_test": teacher,
        "params:distill": params,
    }


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so intermediate outputs can be inspected."""

    def _release(self) -> None:
        pass


def run(inputs: dict) -> DataCatalog:
    pipe = create_pipeline()
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in inputs.items()})
    for name in pipe.all_outputs():
        catalog[name] = KeptDataset()
    SequentialRunner().run(pipe, catalog)
    return catalog


def test_base_and_test_parameters_share_keys():
    def keys(d, prefix=""):
        return {prefix + k for k in d} | {
            x for k, v in d.items() if isinstance(v, dict) for x in keys(v, f"{prefix}{k}.")
        }

    assert keys(tiny_params()) == keys(base_params())


def test_distill_pipeline_trains_all_variants_and_reports():
    inputs = make_inputs()
    catalog = run(inputs)
    meds = inputs["vocab"]["medication"]
    for name in STUDENTS:
        for split in ("val", "test"):
            table = catalog.load(f"{name}_predictions_{split}")
            assert list(table.columns) == ["sample_id", *meds]
            assert (
                table["sample_id"].tolist()
                == inputs[f"samples_{split}"]["sample_id"].astype(str).tolist()
            )
            values = table[meds].to_numpy()
            assert ((values >= 0) & (values <= 1)).all()
    metrics = catalog.load("distill_metrics")
    assert metrics["threshold"] == 0.3
    for name in (*STUDENTS, "teacher"):
        for group in ("overall", "single_visit", "multi_visit"):
            assert set(metrics["test"][name][group]) >= {"prauc", "jaccard", "f1"}
    assert metrics["groups"]["overall"] == len(inputs["samples_test"])
    history = catalog.load("student_training_history")
    assert history["student"]["config"]["kd_enabled"] is True
    assert history["student_no_kd"]["config"]["kd_enabled"] is False
    assert history["student_no_kd"]["loss_weights"]["alpha"] == 0.0
    assert history["student_no_align"]["config"]["align_enabled"] is False
    assert history["student_no_align"]["loss_weights"]["beta"] == 0.0
    # the control: the main student (KD + alignment) distilled from shuffled features
    control = history["student_shuffled_kd"]
    assert control["kd_shuffled"] is True and history["student"]["kd_shuffled"] is False
    assert control["config"]["kd_enabled"] and control["config"]["align_enabled"]
    assert control["loss_weights"] == history["student"]["loss_weights"]
    assert history["student"]["kd_standardised"] is True
    assert all(
        row["share_bce"] + row["share_kd"] + row["share_align"] == pytest.approx(1.0)
        for row in history["student"]["history"]
    )
    shuffled = catalog.load("student_shuffled_kd_predictions_test")[meds].to_numpy()
    assert not np.allclose(shuffled, catalog.load("student_predictions_test")[meds].to_numpy())
    assert catalog.load("kd_tuning") == {
        "enabled": False,
        "chosen": {"alpha": 0.4, "beta": 0.005},
        "selection": "configured (distill.kd.alpha, distill.align.beta)",
    }
    # tracking is off here: registration is skipped with the reason, not an error
    reg = catalog.load("student_registration")
    assert reg["registered"] is False and "MLflow run" in reg["reason"]
    bundle = catalog.load("student_model")
    assert bundle.predict_proba(inputs["samples_test"]).shape == (
        len(inputs["samples_test"]),
        len(meds),
    )


def test_ablations_switch_skips_the_extra_students():
    catalog = run(make_inputs(ablations=False))
    assert len(catalog.load("student_no_kd_predictions_test")) == 0
    assert len(catalog.load("student_shuffled_kd_predictions_test")) == 0
    assert set(catalog.load("student_seed_predictions")["model"]) == {"student"}
    metrics = catalog.load("distill_metrics")
    assert metrics["test"]["student_no_kd"] is None and metrics["test"]["student"] is not None
    assert metrics["training"]["student_no_align"]["skipped"] is True


def test_stale_features_name_the_artifact_and_the_command():
    with pytest.raises(
        StaleFeaturesError, match=r"teacher_features.*kedro run --pipeline=features"
    ):
        run(make_inputs(stale=True))


def test_seeds_train_every_variant_once_per_seed_side_by_side():
    inputs = make_inputs(n_seeds=2, workers=2)
    catalog = run(inputs)
    meds = inputs["vocab"]["medication"]
    long = catalog.load("student_seed_predictions")
    assert list(long.columns) == ["model", "seed", "split", "sample_id", *meds]
    counts = long.groupby(["model", "seed", "split"]).size().to_dict()
    for model in STUDENTS:
        for seed in (42, 43):
            assert counts[(model, seed, "val")] == len(inputs["samples_val"])
            assert counts[(model, seed, "test")] == len(inputs["samples_test"])
    # the first seed's students are the ones the rest of the project reads
    first = long[(long["seed"] == 42) & (long["split"] == "test")]
    for model in STUDENTS:
        table = catalog.load(f"{model}_predictions_test")
        rows = first[first["model"] == model].drop(columns=["model", "seed", "split"])
        np.testing.assert_allclose(rows[meds].to_numpy(), table[meds].to_numpy(), atol=1e-6)
        assert rows["sample_id"].tolist() == table["sample_id"].tolist()
    seeds = long[(long["model"] == "student") & (long["split"] == "test")]
    a, b = (seeds[seeds["seed"] == s][meds].to_numpy() for s in (42, 43))
    assert not np.allclose(a, b)  # another seed is another student
    metrics = catalog.load("distill_metrics")
    by_seed = metrics["test_by_seed"]["student"]
    assert set(by_seed["seeds"]) == {"42", "43"}
    prauc = [v["prauc"] for v in by_seed["seeds"].values()]
    assert by_seed["mean"]["prauc"] == pytest.approx(np.mean(prauc))
    assert by_seed["sd"]["prauc"] == pytest.approx(np.std(prauc, ddof=1))
    history = catalog.load("student_training_history")
    assert [s["seed"] for s in history["student"]["seeds"]] == [42, 43]
    assert history["student"]["seed"] == 42


def test_tuned_loss_weights_reach_every_student_and_never_read_test():
    tune = next(n for n in create_pipeline().nodes if n.name == "tune_loss_weights")
    assert not any(name.endswith("_test") for name in tune.inputs)
    inputs = make_inputs()
    inputs["params:distill"]["tuning"] = {
        "enabled": True,
        "alphas": [0.1, 1.6],
        "betas": [0.02],
        "seeds": 1,
    }
    inputs["params:distill"]["training"]["max_epochs"] = 1
    catalog = run(inputs)
    tuning = catalog.load("kd_tuning")
    assert tuning["enabled"] is True and tuning["selection"] == "val PRAUC"
    best = max(tuning["grid"], key=lambda row: row["val_prauc"])
    assert tuning["chosen"] == {"alpha": best["alpha"], "beta": 0.02}
    history = catalog.load("student_training_history")
    for model in ("student", "student_shuffled_kd"):
        assert history[model]["loss_weights"]["alpha"] == best["alpha"]
        assert history[model]["loss_weights"]["beta"] == 0.02
        assert history[model]["loss_weights_from"] == "kd_tuning (val PRAUC)"
    assert history["student_no_kd"]["loss_weights"] == {"alpha": 0.0, "beta": 0.02, "tau": 0.1}
    assert history["student_no_align"]["loss_weights"]["alpha"] == best["alpha"]
