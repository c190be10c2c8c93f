"""``teacher.n_seeds``: the further teacher seeds' val/test predictions (``teacher_seed_predictions``).

A tiny randomly initialised BERT (MiniLM's tokenizer) trained for one epoch on the tiny cohort:
the real training and prediction code, a few seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_cohort import make_tiny_cohort, save_tiny_bert, tiny_prompts  # noqa: E402

torch = pytest.importorskip("torch")

from leader_kedro.config import build_config  # noqa: E402
from leader_kedro.contracts import ParameterError, TeacherConfigError  # noqa: E402
from leader_kedro.teacher import training as TT  # noqa: E402

SEED = 7


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def cohort() -> dict:
    c = make_tiny_cohort(40, seed=0)
    for split in ("train", "val", "test"):
        c[f"prompts_{split}"] = tiny_prompts(c[f"samples_{split}"])
    return c


def _params(backbone: str, folder: Path, **over) -> dict:
    return {
        "backbone": backbone,
        "num_epochs": 1,
        "per_device_batch_size": 8,
        "learning_rate": 5e-3,
        "head_learning_rate": 2e-2,
        "max_length": 64,
        "checkpoint_dir": str(folder / "ckpt"),
        "resume_from_checkpoint": None,
        "disable_tqdm": True,
        "lora": {"r": 4, "alpha": 8, "layers_to_transform": None},
        **over,
    }


def _train_and_predict(cohort: dict, params: dict, seed: int) -> dict[str, pd.DataFrame]:
    """What train_teacher + predict_teacher make: the teacher's val and test prediction tables."""
    cfg = TT.resolve_params(params)
    bundle, _ = TT.train_teacher(
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        cohort["vocab"]["medication"],
        cfg,
        seed=seed,
    )
    return {
        split: TT.evaluate_split(
            bundle,
            cohort[f"prompts_{split}"],
            cohort[f"samples_{split}"],
            split,
            cfg.threshold,
            cfg.predict_batch_size,
        )[0]
        for split in ("val", "test")
    }


def _seed_table(cohort: dict, first: dict, params: dict) -> tuple[pd.DataFrame, list[dict]]:
    return TT.seed_predictions(
        first["val"],
        first["test"],
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        cohort["prompts_test"],
        cohort["samples_test"],
        cohort["vocab"]["medication"],
        params,
        seed=SEED,
    )


def _rows(table: pd.DataFrame, seed: int, split: str) -> pd.DataFrame:
    part = table[(table["seed"] == seed) & (table["split"] == split)]
    return part.drop(columns=["model", "seed", "split"]).reset_index(drop=True)


def test_two_teacher_seeds_give_both_teachers_val_and_test_rows(tiny_bert, cohort, tmp_path):
    meds = cohort["vocab"]["medication"]
    first = _train_and_predict(cohort, _params(tiny_bert, tmp_path / "first"), SEED)
    table, runs = _seed_table(cohort, first, _params(tiny_bert, tmp_path / "seeds", n_seeds=2))

    assert list(table.columns) == ["model", "seed", "split", "sample_id", *meds]
    assert set(table["model"]) == {"teacher"}
    counts = table.groupby(["seed", "split"]).size().to_dict()
    n_val, n_test = len(cohort["samples_val"]), len(cohort["samples_test"])
    assert counts == {
        (SEED, "val"): n_val,
        (SEED, "test"): n_test,
        (SEED + 1, "val"): n_val,
        (SEED + 1, "test"): n_test,
    }
    for split in ("val", "test"):
        # the first seed is teacher_model: its rows are teacher_predictions_{split}, not retrained
        pd.testing.assert_frame_equal(_rows(table, SEED, split), first[split])
        second = _rows(table, SEED + 1, split)
        assert second["sample_id"].tolist() == cohort[f"samples_{split}"]["sample_id"].tolist()
        assert not np.allclose(second[meds].to_numpy(), first[split][meds].to_numpy())
    # the further seed is the teacher train_teacher makes with that seed (same config, same code)
    again = _train_and_predict(cohort, _params(tiny_bert, tmp_path / "again"), SEED + 1)
    pd.testing.assert_frame_equal(_rows(table, SEED + 1, "test"), again["test"])
    (run,) = runs
    assert run["seed"] == SEED + 1 and 0.0 <= run["best_val_prauc"] <= 1.0


def test_one_teacher_seed_is_the_teacher_tables_without_training(tiny_bert, cohort, tmp_path):
    """n_seeds 1 (the default): nothing is trained, the rows are the teacher's two tables."""
    meds = cohort["vocab"]["medication"]
    rng = np.random.default_rng(0)
    first = {
        split: pd.DataFrame(
            {
                "sample_id": cohort[f"samples_{split}"]["sample_id"],
                **{m: rng.random(len(cohort[f"samples_{split}"])) for m in meds},
            }
        )
        for split in ("val", "test")
    }
    # no backbone to load: a training would fail
    table, runs = _seed_table(cohort, first, {"backbone": str(tmp_path / "none")})
    assert runs == [] and set(table["seed"]) == {SEED}
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(_rows(table, SEED, split), first[split])


def test_teacher_pipeline_writes_the_seed_table(tiny_bert, cohort, tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from leader_kedro.pipelines.teacher import create_pipeline

    pipeline = create_pipeline()
    assert "teacher_seed_predictions" in pipeline.all_outputs()
    catalog = DataCatalog(
        {
            **{
                name: MemoryDataset(cohort[name], copy_mode="assign")
                for s in ("train", "val", "test")
                for name in (f"prompts_{s}", f"samples_{s}")
            },
            "vocab": MemoryDataset(cohort["vocab"]),
            "params:teacher": MemoryDataset(_params(tiny_bert, tmp_path)),
            "params:seed": MemoryDataset(SEED),
        }
    )

    class Kept(MemoryDataset):  # the runner releases intermediates; keep them for the asserts
        def _release(self) -> None:
            pass

    kept = ("teacher_predictions_val", "teacher_predictions_test", "teacher_seed_predictions")
    for name in kept:
        catalog[name] = Kept(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    table = catalog.load("teacher_seed_predictions")
    assert set(table["seed"]) == {SEED}
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(
            _rows(table, SEED, split), catalog.load(f"teacher_predictions_{split}")
        )


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_n_seeds_must_be_a_positive_integer(value):
    with pytest.raises(ParameterError, match=r"teacher\.n_seeds"):
        build_config(TT.TeacherConfig, {"n_seeds": value}, "teacher")
    with pytest.raises(ParameterError, match=r"teacher\.n_seeds"):
        TT.resolve_params({"n_seeds": value})


def test_n_seeds_defaults_to_one_and_is_checked_in_the_dataclass():
    assert TT.TeacherConfig().n_seeds == 1
    assert build_config(TT.TeacherConfig, {"n_seeds": 3}, "teacher").n_seeds == 3
    assert TT.teacher_seeds(42, 3) == [42, 43, 44]
    with pytest.raises(TeacherConfigError, match=r"teacher\.n_seeds must be an integer >= 1"):
        TT.TeacherConfig(n_seeds=0)
