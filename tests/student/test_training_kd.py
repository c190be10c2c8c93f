"""Distillation that weighs (issue 11): the standardised KD target, the loss-term shares, the
shuffled-features control and the alpha / beta tuning on val."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_cohort import make_tiny_cohort

from leader_kedro.contracts import StaleFeaturesError, aligned_teacher_features
from leader_kedro.pipelines.distill import nodes
from leader_kedro.student.training import (
    Prepared,
    distill_config,
    fit,
    prepare,
    shuffle_index,
    train_students,
    tune_loss_weights,
    variant_config,
    with_loss_weights,
)
from leader_kedro.teacher.features import standardisation_stats

PARAMS = {
    "model": {
        "hidden_size": 16,
        "n_heads": 2,
        "intermediate_size": 32,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    },
    "kd": {"enabled": True, "alpha": 0.4},
    "align": {"enabled": True, "beta": 0.005, "tau": 0.1},
    "training": {
        "lr": 0.002,
        "batch_size": 16,
        "max_epochs": 2,
        "patience": 2,
        "seed": 7,
        "n_seeds": 1,
        "workers": 1,
        "progress": False,
    },
}


@pytest.fixture(scope="module")
def cohort():
    return make_tiny_cohort(60, seed=3)


def teacher_features(samples: pd.DataFrame, stats: bool = True, seed: int = 0) -> dict:
    """Float16 features with a large shared mean and unequal spreads per dimension (as a real
    teacher's are), carrying their train statistics as the features stage writes them."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, 12)
    values = (5.0 + scale * torch.randn(len(samples), 12, generator=gen)).to(torch.float16)
    meta = {"standardisation": standardisation_stats(values)} if stats else {}
    return {
        "sample_ids": [str(s) for s in samples["sample_id"]],
        "hidden": values,
        "fingerprint": "test",
        "metadata": meta,
    }


def prepared_for(cohort, params=PARAMS, **feature_args) -> tuple[Prepared, dict]:
    cfg = distill_config(params)
    train, val = cohort["samples_train"], cohort["samples_val"]
    feats = teacher_features(train, **feature_args)
    return prepare(cfg, train, val, cohort["vocab"], feats, cohort["code_names"]), feats


# ------------------------------------------------------------------------ standardised target
def test_standardised_target_has_zero_mean_unit_sd_on_train(cohort):
    prepared, feats = prepared_for(cohort)
    x = prepared.teacher_hidden
    assert prepared.teacher_standardised and x.dtype == torch.float32
    assert x.mean(0).abs().max() < 1e-4
    np.testing.assert_allclose(x.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    # the raw rows (what kd.standardise: false distils to) keep the shared mean of ~5
    raw_cfg = distill_config({**PARAMS, "kd": {**PARAMS["kd"], "standardise": False}})
    train = cohort["samples_train"]
    raw = prepare(raw_cfg, train, cohort["samples_val"], cohort["vocab"], feats)
    assert not raw.teacher_standardised
    ids = train["sample_id"].astype(str).tolist()
    torch.testing.assert_close(raw.teacher_hidden, aligned_teacher_features(feats, ids).float())
    assert raw.teacher_hidden.mean() > 4
    # standardising is the per-dimension affine map of the raw rows
    stats = feats["metadata"]["standardisation"]
    expected = (raw.teacher_hidden - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
    torch.testing.assert_close(x, expected)


def test_missing_statistics_are_refused_with_the_command_and_the_switch(cohort):
    with pytest.raises(StaleFeaturesError) as err:
        prepared_for(cohort, stats=False)
    message = str(err.value)
    assert "teacher_features_train" in message and "standardisation statistics" in message
    assert "kedro run --pipeline=features" in message and "distill.kd.standardise" in message
    # switched off, the same cache is distilled raw
    raw = {**PARAMS, "kd": {**PARAMS["kd"], "standardise": False}}
    prepared, _ = prepared_for(cohort, raw, stats=False)
    assert prepared.teacher_hidden is not None and not prepared.teacher_standardised


def test_training_info_records_the_target(cohort):
    prepared, _ = prepared_for(cohort)
    cfg = distill_config(PARAMS)
    _, info = fit(cfg, prepared, "main")
    assert info["kd_standardised"] is True and info["kd_shuffled"] is False
    _, info = fit(variant_config(cfg, "no_kd"), prepared, "no_kd")
    assert info["kd_standardised"] is None  # no KD target at all


# ------------------------------------------------------------------------------ loss shares
def test_loss_shares_are_the_weighted_terms_over_the_total(cohort):
    prepared, _ = prepared_for(cohort)
    cfg = with_loss_weights(distill_config(PARAMS), alpha=1.6, beta=0.02)
    _, info = fit(cfg, prepared, "main")
    assert len(info["history"]) == 2
    for row in info["history"]:
        shares = [row["share_bce"], row["share_kd"], row["share_align"]]
        assert all(0.0 <= s <= 1.0 for s in shares)
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert row["share_kd"] == pytest.approx(1.6 * row["train_kd"] / row["train_total"])
        assert row["share_align"] == pytest.approx(0.02 * row["train_align"] / row["train_total"])
        assert row["share_kd"] > 0 and row["share_align"] > 0
    _, info = fit(variant_config(cfg, "no_kd"), prepared, "no_kd")
    assert all(row["share_kd"] == 0.0 for row in info["history"])
    assert all(
        row["share_bce"] + row["share_align"] == pytest.approx(1.0) for row in info["history"]
    )


# ---------------------------------------------------------------------- shuffled-features control
def test_shuffle_is_a_fixed_permutation_that_moves_every_row(cohort):
    prepared, _ = prepared_for(cohort)
    rows = prepared.teacher_hidden
    n = len(rows)
    index = shuffle_index(n, 7)
    assert sorted(index.tolist()) == list(range(n))  # a permutation
    assert bool((index != torch.arange(n)).all())  # each sample gets another sample's features
    torch.testing.assert_close(shuffle_index(n, 7), index)  # deterministic per seed
    assert not torch.equal(shuffle_index(n, 8), index)  # another seed, another permutation
    shuffled = rows.index_select(0, index)
    # the same multiset of rows, nearly all of them in another sample's place
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(shuffled) == key(rows)
    assert (shuffled != rows).any(1).float().mean() > 0.9


def test_shuffled_control_distils_from_the_permuted_rows(cohort):
    prepared, _ = prepared_for(cohort)
    cfg = distill_config(PARAMS)
    seed = cfg.training.seed
    control, info = fit(cfg, prepared, "shuffled_kd")
    assert info["kd_shuffled"] is True and info["config"]["kd_enabled"] is True
    assert info["loss_weights"]["alpha"] == 0.4 and info["loss_weights"]["beta"] == 0.005
    # the same training as the main student on rows permuted by shuffle_index(n, seed)
    rows = prepared.teacher_hidden
    permuted = replace(
        prepared, teacher_hidden=rows.index_select(0, shuffle_index(len(rows), seed))
    )
    same, _ = fit(cfg, permuted, "main")
    val = cohort["samples_val"]
    np.testing.assert_array_equal(control.predict_proba(val), same.predict_proba(val))
    main, _ = fit(cfg, prepared, "main")
    assert not np.allclose(control.predict_proba(val), main.predict_proba(val))


def test_shuffled_control_is_an_ablation(cohort):
    cfg = distill_config(PARAMS)
    assert "shuffled_kd" in cfg.variants
    assert distill_config({**PARAMS, "ablations": False}).variants == ("main",)


# ------------------------------------------------------------------------------------ tuning
TUNED = {
    **PARAMS,
    "tuning": {"enabled": True, "alphas": [0.1, 6.4], "betas": [0.005], "seeds": 1},
}


def test_tuning_picks_the_best_val_prauc_of_the_grid(cohort):
    cfg = distill_config(TUNED)
    prepared, _ = prepared_for(cohort, TUNED)
    result = tune_loss_weights(cfg, prepared)
    assert result["enabled"] is True and result["selection"] == "val PRAUC"
    grid = result["grid"]
    assert [(r["alpha"], r["beta"]) for r in grid] == [(0.1, 0.005), (6.4, 0.005)]
    best = max(grid, key=lambda r: r["val_prauc"])
    assert result["chosen"] == {"alpha": best["alpha"], "beta": best["beta"]}
    # each score is the best-epoch val PRAUC of that student, trained for real
    for row in grid:
        _, info = fit(with_loss_weights(cfg, row["alpha"], row["beta"]), prepared, "main")
        assert row["val_prauc"] == pytest.approx(info["best_val_prauc"])
        assert row["best_epoch"] == info["best_epoch"]
    assert grid[0]["val_prauc"] != grid[1]["val_prauc"]


def test_grid_students_side_by_side_equal_in_process(cohort):
    cfg = distill_config({**TUNED, "training": {**TUNED["training"], "workers": 2}})
    prepared, _ = prepared_for(cohort, TUNED)
    pairs = [(0.1, 0.005), (6.4, 0.005)]
    parallel = train_students(cfg, prepared, ("main",), (7,), pairs)
    assert [t.loss_weights for t in parallel] == pairs
    for t, (alpha, beta) in zip(parallel, pairs, strict=True):
        assert t.info["loss_weights"]["alpha"] == alpha
        _, info = fit(with_loss_weights(cfg, alpha, beta), prepared, "main")
        assert t.info["best_val_prauc"] == pytest.approx(info["best_val_prauc"])


def test_disabled_tuning_trains_nothing_and_keeps_the_config():
    params = {**PARAMS, "kd": {"enabled": True, "alpha": 0.8}}
    empty = pd.DataFrame()  # training on it would fail: nothing is trained
    out = nodes.tune_loss_weights(empty, empty, {}, {}, None, {}, empty, params)
    assert out["enabled"] is False
    assert out["chosen"] == {"alpha": 0.8, "beta": 0.005}


def test_tuning_config_is_checked():
    from leader_kedro.contracts import ParameterError

    with pytest.raises(ParameterError, match=r"distill\.tuning\.alphas"):
        distill_config({"tuning": {"alphas": []}})
    with pytest.raises(ParameterError, match=r"distill\.tuning\.seeds"):
        distill_config({"tuning": {"seeds": 0}})
