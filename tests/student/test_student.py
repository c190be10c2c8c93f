"""LEADER(S) student: batching (window, masks, alignment ids), loss terms, training, persistence."""

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro.contracts import (
    StaleFeaturesError,  # noqa: E402
    aligned_teacher_features,  # noqa: E402
)
from leader_kedro.student.model import (  # noqa: E402
    LeaderStudent,
    collate,
    encode_samples,
    make_config,
    student_loss,
)
from leader_kedro.student.training import (  # noqa: E402
    compare_predictions,
    train_student,
)

SMALL = {
    "hidden_size": 16,
    "n_heads": 2,
    "intermediate_size": 32,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
}
PARAMS = {
    "model": SMALL,
    "kd": {"enabled": True, "alpha": 0.4},
    "align": {"enabled": True, "beta": 0.005, "tau": 0.1},
    "training": {
        "lr": 0.002,
        "batch_size": 16,
        "max_epochs": 3,
        "patience": 2,
        "seed": 7,
        "progress": False,
    },
}


@pytest.fixture(scope="module")
def cohort():
    return make_tiny_cohort(60, seed=0)


def fake_features(samples: pd.DataFrame, hidden: int = 12, seed: int = 0) -> dict:
    """Random float16 teacher features with their standardisation statistics: an input to the
    student, not a mock of the teacher."""
    from leader_kedro.teacher.features import standardisation_stats

    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(len(samples), hidden, generator=gen).to(torch.float16)
    return {
        "sample_ids": [str(s) for s in samples["sample_id"]],
        "hidden": values,
        "fingerprint": "test",
        "metadata": {"standardisation": standardisation_stats(values)},
    }


def one_patient(n_visits: int, vocab: dict) -> pd.DataFrame:
    meds, dx, px = vocab["medication"], vocab["diagnosis"], vocab["procedure"]
    return pd.DataFrame(
        [
            {
                "sample_id": "1_1",
                "subject_id": 1,
                "hadm_id": 1,
                "n_past": n_visits - 1,
                "diagnoses": [[dx[v % len(dx)]] for v in range(n_visits)],
                "procedures": [[px[v % len(px)]] for v in range(n_visits)],
                "medications": [[meds[v % len(meds)]] for v in range(n_visits - 1)],
                "target": [meds[0], meds[3]],
                "gender": "F",
                "age": 71.0,
                "insurance": "Medicare",
                "language": "ENGL",
                "marital_status": "MARRIED",
                "ethnicity": "WHITE",
                "admission_type": "EMERGENCY",
            }
        ]
    )


def model_for(vocab, **overrides):
    torch.manual_seed(0)
    cfg = make_config(vocab, {**SMALL, "teacher_hidden_size": 12, **overrides})
    return LeaderStudent(cfg)


def test_single_visit_patient_has_profile_only_med_stream(cohort):
    vocab = cohort["vocab"]
    enc = encode_samples(one_patient(1, vocab), vocab)
    assert enc.n_visits.tolist() == [1]
    # no past medications: slot 0 (the profile's slot) holds no medication set
    assert enc.codes("medications", 0) == [[]]
    batch = collate(enc, [0])
    assert batch["rx_dest"].numel() == 0 and batch["first_visit"].tolist() == [0]
    assert batch["vis_position"].tolist() == [0]
    model = model_for(vocab).eval()
    out = model(batch)
    assert torch.isfinite(out["logits"]).all() and out["logits"].shape == (
        1,
        len(vocab["medication"]),
    )
    # the medication stream is the profile prompt: changing the profile changes the prediction
    other = dict(batch, profile=batch["profile"].clone())
    other["profile"][0, 0] = (other["profile"][0, 0] + 1) % len(vocab["profile"]["gender"])
    assert not torch.allclose(model(other)["logits"], out["logits"])


def test_window_keeps_last_visits_including_current(cohort):
    vocab = cohort["vocab"]
    tok = {t: i for i, t in enumerate(vocab["tokens"])}
    sample = one_patient(12, vocab)
    enc = encode_samples(sample, vocab, max_visits=10)
    assert enc.report["samples_visits_truncated"] == 1
    assert enc.report["visits_dropped_by_window"] == 2
    assert enc.n_visits.tolist() == [10]
    batch = collate(enc, [0])
    assert batch["vis_position"].tolist() == list(range(9, -1, -1))
    dx = sample.loc[0, "diagnoses"]
    slots = enc.codes("diagnoses", 0)
    # window = visits 2..11; the current (12th) visit is the last slot
    assert slots[-1] == [tok[f"D_{dx[11][0]}"]]
    assert slots[0] == [tok[f"D_{dx[2][0]}"]]
    rx = sample.loc[0, "medications"]
    med_slots = enc.codes("medications", 0)
    assert med_slots[0] == []  # the profile slot
    for t in range(1, 10):  # slot t holds the medications of window visit t-1
        assert med_slots[t] == [tok[f"M_{rx[2 + t - 1][0]}"]]
    # the batch puts slot t of the sample at visit row t; slot 0 gets the profile
    assert batch["rx_dest"].tolist() == list(range(1, 10))
    assert batch["dx_dest"].tolist() == list(range(10))


def test_codes_beyond_max_codes_are_cut_and_counted(cohort):
    vocab = cohort["vocab"]
    sample = one_patient(2, vocab)
    sample.at[0, "diagnoses"] = [
        list(vocab["diagnosis"]),
        list(vocab["diagnosis"]) + ["NOT_A_CODE"],
    ]
    enc = encode_samples(sample, vocab, max_codes=3)
    assert enc.report["codes_truncated"] == 2 * (len(vocab["diagnosis"]) - 3)
    assert enc.report["visits_codes_truncated"] == 2
    assert enc.report["unknown_codes_dropped"]["diagnosis"] == 1
    assert [len(v) for v in enc.codes("diagnoses", 0)] == [3, 3]
    assert collate(enc, [0])["dx_tokens"].numel() == 6


def test_alignment_uses_medication_token_ids(cohort):
    vocab = cohort["vocab"]
    samples = cohort["samples_train"].head(8)
    enc = encode_samples(samples, vocab)
    batch = collate(enc, range(8))
    for b, target in enumerate(samples["target"]):
        ids = enc.codes("targets", b)[0]
        expected = [vocab["tokens"].index(f"M_{m}") for m in target]
        assert ids == expected
        # the published bug used the medication-vocabulary index instead
        assert ids != [vocab["medication"].index(m) for m in target]
        assert all(vocab["tokens"][i].startswith("M_") for i in ids)
        hot = np.nonzero(batch["targets"][b].numpy())[0].tolist()
        assert sorted(vocab["medication"][k] for k in hot) == sorted(target)
    # the target sets ride at the end of the batch's medication sets, one per sample
    n_target_tokens = sum(len(enc.codes("targets", b)[0]) for b in range(8))
    assert batch["tg_dest"].tolist() == list(range(8))
    assert batch["rx_tokens"][-n_target_tokens:].tolist() == [
        i for b in range(8) for i in enc.codes("targets", b)[0]
    ]


def test_one_optimiser_step_lowers_the_loss(cohort):
    vocab = cohort["vocab"]
    samples = cohort["samples_train"]
    feats = fake_features(samples)
    enc = encode_samples(samples, vocab)
    batch = collate(enc, range(32), aligned_teacher_features(feats, list(samples["sample_id"])))
    model = model_for(vocab)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = student_loss(model, batch)
    opt.zero_grad()
    before["total"].backward()
    opt.step()
    after = student_loss(model, batch)
    assert after["total"].item() < before["total"].item()
    assert before["kd"].item() > 0 and before["align"].item() > 0


def test_inference_tables_follow_the_weights(cohort):
    """Inference reads per-code and profile tables made from the weights once; an optimiser step
    (in place, between two predictions in eval mode) and ``load_state_dict`` must both show."""
    vocab = cohort["vocab"]
    samples = cohort["samples_train"]
    enc = encode_samples(samples, vocab)
    model, fresh = model_for(vocab), model_for(vocab)
    idx = list(range(6))
    batch = collate(enc, idx, target_sets=False, for_training=False)

    def both(m):  # the bucket path and the small-request path
        with torch.inference_mode():
            return m.logits(batch), m.logits_padded(enc, idx)

    model.eval()
    first = both(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.zero_grad()
    with torch.enable_grad():  # a training step taken without leaving eval mode
        student_loss(model, collate(enc, idx))["total"].backward()
    opt.step()
    stepped = both(model)
    assert not torch.allclose(stepped[0], first[0])
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    expected = both(fresh)
    for got, want in zip(stepped, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    model.load_state_dict(model_for(vocab).state_dict())  # back to the first weights, in place
    for got, want in zip(both(model), first, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    fresh.load_state_dict(model_for(vocab).state_dict(), assign=True)  # new parameter tensors
    for got, want in zip(both(fresh), first, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_switches_change_the_loss_terms(cohort):
    vocab = cohort["vocab"]
    samples = cohort["samples_train"]
    feats = fake_features(samples)
    enc = encode_samples(samples, vocab)
    batch = collate(enc, range(16), aligned_teacher_features(feats, list(samples["sample_id"])))

    model = model_for(vocab)
    terms = student_loss(model, batch, alpha=0.0, beta=0.005)
    terms["total"].backward()
    assert terms["kd"].item() == 0.0
    assert model.projector.weight.grad is None  # alpha = 0: no gradient into the KD projector
    assert model.x_projector.weight.grad is not None

    model = model_for(vocab)
    terms = student_loss(model, batch, alpha=0.4, beta=0.0)
    terms["total"].backward()
    assert model.projector.weight.grad.abs().sum() > 0
    assert model.x_projector.weight.grad is None
    assert torch.isclose(terms["total"], terms["bce"] + 0.4 * terms["kd"])

    no_kd = model_for(vocab, kd_enabled=False, align_enabled=False)
    assert no_kd.projector is None and not hasattr(no_kd, "x_projector")
    terms = student_loss(no_kd, batch)
    assert terms["kd"].item() == 0.0 and terms["align"].item() == 0.0
    assert torch.isclose(terms["total"], terms["bce"])

    no_profile = model_for(vocab, profile_enabled=False, align_enabled=False)
    assert not hasattr(no_profile, "profile_embeddings")
    with pytest.raises(ValueError, match="align_enabled needs profile_enabled"):
        make_config(
            vocab, {"profile_enabled": False, "align_enabled": True, "teacher_hidden_size": 12}
        )


def test_training_is_deterministic_and_learns(cohort):
    vocab = cohort["vocab"]
    train, val, test = cohort["samples_train"], cohort["samples_val"], cohort["samples_test"]
    feats = fake_features(train)
    b1, h1 = train_student(train, val, vocab, PARAMS, feats, cohort["code_names"])
    b2, h2 = train_student(train, val, vocab, PARAMS, feats, cohort["code_names"])
    p1, p2 = b1.predict_proba(test), b2.predict_proba(test)
    assert p1.shape == (len(test), len(vocab["medication"]))
    np.testing.assert_array_equal(p1, p2)
    assert [r["train_total"] for r in h1["history"]] == [r["train_total"] for r in h2["history"]]
    assert h1["history"][-1]["train_total"] < h1["history"][0]["train_total"]
    assert 1 <= h1["best_epoch"] <= h1["epochs_run"] <= 3
    other = dict(PARAMS, training={**PARAMS["training"], "seed": 8})
    b3, _ = train_student(train, val, vocab, other, feats)
    assert not np.array_equal(p1, b3.predict_proba(test))


def test_students_trained_side_by_side_equal_the_ones_trained_in_process(cohort):
    from leader_kedro.student.training import distill_config, prepare, train_students

    vocab = cohort["vocab"]
    train, val, test = cohort["samples_train"], cohort["samples_val"], cohort["samples_test"]
    cfg = distill_config(
        {**PARAMS, "ablations": True, "training": {**PARAMS["training"], "n_seeds": 2}}
    )
    prepared = prepare(cfg, train, val, vocab, fake_features(train), None, test)
    inline = train_students(cfg, prepared, variants=("main", "no_kd"))
    parallel = train_students(
        distill_config({**PARAMS, "training": {**PARAMS["training"], "n_seeds": 2, "workers": 2}}),
        prepared,
        variants=("main", "no_kd"),
    )
    assert [(r.variant, r.seed) for r in inline] == [
        ("main", 7),
        ("main", 8),
        ("no_kd", 7),
        ("no_kd", 8),
    ]
    for a, b in zip(inline, parallel, strict=True):
        assert (a.variant, a.seed) == (b.variant, b.seed)
        np.testing.assert_array_equal(a.test_probs, b.test_probs)
        np.testing.assert_array_equal(a.val_probs, b.val_probs)
        np.testing.assert_array_equal(b.bundle.predict_proba(test), b.test_probs)
    assert not np.array_equal(inline[0].test_probs, inline[1].test_probs)


def test_missing_train_features_name_the_artifact_and_command(cohort):
    train = cohort["samples_train"]
    feats = fake_features(train.iloc[1:])
    with pytest.raises(
        StaleFeaturesError, match=r"teacher_features.*kedro run --pipeline=features"
    ):
        train_student(train, cohort["samples_val"], cohort["vocab"], PARAMS, feats)
    with pytest.raises(ValueError, match="teacher_features"):
        train_student(train, cohort["samples_val"], cohort["vocab"], PARAMS, None)


def test_bad_samples_are_rejected_with_the_column(cohort):
    vocab = cohort["vocab"]
    with pytest.raises(ValueError, match="target"):
        encode_samples(cohort["samples_train"].drop(columns=["target"]), vocab)
    bad = one_patient(3, vocab)
    bad.at[0, "medications"] = bad.loc[0, "medications"] + [["A02B"]]
    with pytest.raises(ValueError, match="current visit last"):
        encode_samples(bad, vocab)


def test_student_dataset_round_trip(cohort, tmp_path):
    from kedro.io.core import Version

    from leader_kedro.datasets.student_dataset import StudentModelDataset

    vocab, test = cohort["vocab"], cohort["samples_test"]
    params = {
        **PARAMS,
        "kd": {"enabled": False},
        "training": {**PARAMS["training"], "max_epochs": 1},
    }
    bundle, _ = train_student(
        cohort["samples_train"], cohort["samples_val"], vocab, params, None, cohort["code_names"]
    )
    ds = StudentModelDataset(str(tmp_path / "student_model"), version=Version(None, None))
    assert not ds.exists()
    ds.save(bundle)
    assert ds.exists()
    saved = next((tmp_path / "student_model").iterdir()) / "student_model"
    assert {p.name for p in saved.iterdir()} == {
        "student.safetensors",
        "student_config.json",
        "vocab.json",
        "code_names.json",
    }
    loaded = StudentModelDataset(
        str(tmp_path / "student_model"), version=Version(None, None)
    ).load()
    assert loaded.n_parameters == bundle.n_parameters
    assert not loaded.module.training
    np.testing.assert_allclose(
        loaded.predict_proba(test), bundle.predict_proba(test), rtol=0, atol=1e-6
    )
    table = loaded.predictions_table(test)
    assert list(table.columns) == ["sample_id", *vocab["medication"]]
    assert table["sample_id"].tolist() == test["sample_id"].astype(str).tolist()


def test_compare_predictions_groups(cohort):
    vocab, test = cohort["vocab"], cohort["samples_test"]
    from leader_kedro.contracts import label_matrix, predictions_frame

    perfect = predictions_frame(
        test["sample_id"], label_matrix(test, vocab)[0], vocab["medication"]
    )
    out = compare_predictions(test, vocab, {"oracle": perfect.iloc[::-1], "skipped": None})
    assert out["test"]["skipped"] is None
    assert out["test"]["oracle"]["overall"]["prauc"] == pytest.approx(1.0)
    assert out["test"]["oracle"]["overall"]["jaccard"] == pytest.approx(1.0)
    n = out["groups"]
    assert n["single_visit"] + n["multi_visit"] == n["overall"] == len(test)
    assert n["single_visit"] == int((test["n_past"] == 0).sum())
