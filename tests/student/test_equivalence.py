"""The packed student computes what the padded one did (issue 10): same weights, same samples,
same numbers within 1e-5. The reference is ``leader_kedro.student.legacy``, a frozen copy of the
student before the change (padded batches, unfused attention and layer norm)."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_cohort import NAMES, PROFILE

from leader_kedro.student import kernels, legacy
from leader_kedro.student.model import (
    SMALL_BATCH,
    LeaderStudent,
    StudentBundle,
    collate,
    encode_samples,
    make_config,
    student_loss,
)
from leader_kedro.student.serving import LeaderStudentPyfunc

ATOL = 1e-5
DIAGS = [f"{400 + i}" for i in range(120)]
PROCS = [f"{30 + i}" for i in range(40)]
MEDS = [f"A{i:02d}X" for i in range(50)]


def varied_cohort(n: int = 90, seed: int = 0):
    """Samples whose sets cover every attention bucket: empty sets, one code, up to 16, up to 32,
    over 32, unknown codes, histories beyond the window, missing profile values."""
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 1, 2, 5, 15, 16, 17, 31, 32, 33, 45]
    rows = []
    for i in range(n):
        n_vis = int(rng.choice([1, 1, 2, 3, 7, 12]))

        def visit(codes, extra_unknown=False):
            k = int(rng.choice(sizes))
            out = list(rng.choice(codes, size=min(k, len(codes)), replace=False))
            return out + (["UNSEEN"] if extra_unknown else [])

        dx = [visit(DIAGS, extra_unknown=bool(rng.random() < 0.1)) for _ in range(n_vis)]
        px = [visit(PROCS) for _ in range(n_vis)]
        rx = [visit(MEDS) for _ in range(n_vis)]
        row = {
            "sample_id": f"s{i}",
            "n_past": n_vis - 1,
            "diagnoses": dx,
            "procedures": px,
            "medications": rx[:-1],
            "target": rx[-1] or [MEDS[0]],
            "age": float(rng.integers(15, 95)) if rng.random() > 0.1 else float("nan"),
        }
        for f, values in PROFILE.items():
            row[f] = str(rng.choice(values[1:])) if rng.random() > 0.1 else None
        rows.append(row)
    tokens = (
        ["[PAD]", "[CLS]", "[MASK]"]
        + [f"M_{m}" for m in MEDS]
        + [f"D_{d}" for d in DIAGS]
        + [f"P_{p}" for p in PROCS]
    )
    vocab = {
        "medication": MEDS,
        "diagnosis": DIAGS,
        "procedure": PROCS,
        "tokens": tokens,
        "profile": PROFILE,
        "age_bins": [18, 30, 40, 50, 60, 70, 80, 90],
    }
    return vocab, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort():
    return varied_cohort()


def pair(vocab, seed=0, **overrides):
    """A packed and a padded student holding the same weights."""
    cfg = make_config(
        vocab, {"teacher_hidden_size": 24, "hidden_size": 32, "n_heads": 4, **overrides}
    )
    torch.manual_seed(seed)
    old = legacy.LeaderStudent(cfg)
    new = LeaderStudent(cfg)
    new.load_state_dict(old.state_dict())  # one state dict fits both: same parameter names
    return cfg, old, new


def test_encodings_report_the_same_cuts_and_drops(cohort):
    vocab, samples = cohort
    assert encode_samples(samples, vocab).report == legacy.encode_samples(samples, vocab).report


def test_one_sample_at_a_time_encodes_like_the_whole_split(cohort):
    """A single request takes the encoder's plain-Python path, a split the vectorised one."""
    vocab, samples = cohort
    whole = encode_samples(samples, vocab, max_codes=20)
    totals = {"codes_truncated": 0, "visits_codes_truncated": 0, "unknown_targets_dropped": 0}
    for i in range(len(samples)):
        one = encode_samples(samples.iloc[[i]], vocab, max_codes=20)
        for kind in ("diagnoses", "procedures", "medications", "targets"):
            assert one.codes(kind, 0) == whole.codes(kind, i), (kind, i)
        np.testing.assert_array_equal(one.profile[0], whole.profile[i])
        np.testing.assert_array_equal(one.targets[0], whole.targets[i])
        for key in totals:
            totals[key] += one.report[key]
    assert totals["codes_truncated"] == whole.report["codes_truncated"] > 0
    for key in totals:
        assert totals[key] == whole.report[key]


@pytest.mark.parametrize("batch", [1, 7, 90])
def test_packed_forward_equals_padded_reference(cohort, batch):
    vocab, samples = cohort
    _, old, new = pair(vocab)
    old.eval(), new.eval()
    enc_old, enc_new = legacy.encode_samples(samples, vocab), encode_samples(samples, vocab)
    with torch.no_grad():
        for s in range(0, len(samples), batch):
            idx = list(range(s, min(len(samples), s + batch)))
            a, b = old(legacy.collate(enc_old, idx)), new(collate(enc_new, idx))
            for key in ("logits", "hidden", "kd", "profile"):
                torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=0)
            x_old, y_old = old.align_pair(legacy.collate(enc_old, idx), a["profile"])
            x_new, y_new = new.align_pair(b)
            torch.testing.assert_close(x_new, x_old, atol=ATOL, rtol=0)
            torch.testing.assert_close(y_new, y_old, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"visit_positions": False},
        {"profile_enabled": False, "align_enabled": False, "kd_enabled": False},
    ],
)
def test_training_step_equals_padded_reference_without_dropout(cohort, switches):
    """Loss terms and every parameter gradient, train mode (dropout 0 makes it deterministic)."""
    vocab, samples = cohort
    _, old, new = pair(vocab, seed=3, hidden_dropout=0.0, attention_dropout=0.0, **switches)
    old.train(), new.train()
    hidden = torch.randn(len(samples), 24, generator=torch.Generator().manual_seed(0))
    idx = list(range(5, 37))
    enc_old, enc_new = legacy.encode_samples(samples, vocab), encode_samples(samples, vocab)
    a = legacy.student_loss(old, legacy.collate(enc_old, idx, hidden))
    b = student_loss(new, collate(enc_new, idx, hidden))
    for key in ("total", "bce", "kd", "align"):
        torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=0)
    a["total"].backward()
    b["total"].backward()
    grads_old = dict(old.named_parameters())
    for name, p in new.named_parameters():
        g_old = grads_old[name].grad
        if g_old is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, g_old, atol=ATOL, rtol=0, msg=name)


def test_inference_batch_without_distinct_code_tables_gives_the_same_model(cohort):
    """An inference batch (``for_training=False``) lacks the per-batch distinct-code tables: the
    forward pass without autograd reads per-code tables instead, and one with autograd projects
    the whole vocabulary. Both give the training batch's outputs, loss and gradients."""
    vocab, samples = cohort
    _, _, new = pair(vocab, seed=5, hidden_dropout=0.0, attention_dropout=0.0)
    hidden = torch.randn(len(samples), 24, generator=torch.Generator().manual_seed(1))
    enc = encode_samples(samples, vocab)
    idx = list(range(3, 40))
    full, lean = collate(enc, idx, hidden), collate(enc, idx, hidden, for_training=False)
    assert "dx_uniq" in full and not any(k.endswith("_uniq") for k in lean)
    grads = []
    for batch in (full, lean):
        new.zero_grad(set_to_none=True)
        new.train()
        terms = student_loss(new, batch)
        terms["total"].backward()
        grads.append({n: p.grad.clone() for n, p in new.named_parameters() if p.grad is not None})
        new.eval()
        with torch.inference_mode():
            grads[-1]["logits"] = new(batch)["logits"]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize(
    "switches",
    [{}, {"visit_positions": False}, {"profile_enabled": False, "align_enabled": False}],
)
def test_small_request_path_equals_padded_reference(cohort, switches):
    """``logits_padded`` (one padded bucket per stream, the path of requests of at most
    ``SMALL_BATCH`` samples) gives the padded reference's logits, for every sample of the varied
    cohort (empty sets, one code, 45 codes, histories beyond the window) alone and in batches."""
    vocab, samples = cohort
    _, old, new = pair(vocab, seed=7, **switches)
    old.eval(), new.eval()
    enc_old, enc_new = legacy.encode_samples(samples, vocab), encode_samples(samples, vocab)
    with torch.inference_mode():
        for batch in (1, 2, SMALL_BATCH, 7):
            for s in range(0, len(samples), batch):
                idx = list(range(s, min(len(samples), s + batch)))
                expected = old(legacy.collate(enc_old, idx))["logits"]
                torch.testing.assert_close(
                    new.logits_padded(enc_new, idx), expected, atol=ATOL, rtol=0
                )


@pytest.fixture(params=sorted(kernels.implementations()))
def linear_gelu_pinned(request):
    """Each inference linear + GELU implementation in turn (student/kernels.py)."""
    kernels.use(request.param)
    yield request.param
    kernels.use(None)


def test_default_size_probabilities_equal_padded_reference(cohort, linear_gelu_pinned):
    """The deployed configuration (d=64, 4 heads, FFN 300) through the bundle's predict_proba,
    with each of the linear + GELU implementations the process may choose."""
    vocab, samples = cohort
    cfg = make_config(vocab, {"teacher_hidden_size": 16})
    torch.manual_seed(1)
    old = legacy.LeaderStudent(cfg)
    new = LeaderStudent(cfg)
    new.load_state_dict(old.state_dict())
    bundle = StudentBundle(new, cfg, vocab)
    expected = legacy.predict_proba(old, vocab, cfg, samples, batch_size=32)
    for batch_size in (1, 32, 256):
        np.testing.assert_allclose(
            bundle.predict_proba(samples, batch_size), expected, atol=ATOL, rtol=0
        )


def test_served_ranking_equals_the_padded_pyfunc(cohort):
    vocab, samples = cohort
    cfg, old, new = pair(vocab, seed=2)
    names = {**NAMES, "medication": {m: f"class {m}" for m in MEDS}}
    records = samples.drop(columns=["sample_id", "n_past", "target"]).head(40).copy()
    records["top_k"] = [None if i % 3 == 0 else i % 7 for i in range(len(records))]
    expected = legacy.pyfunc_predict(old.eval(), vocab, names, cfg, records, default_top_k=5)
    served = LeaderStudentPyfunc(top_k=5)
    served.bundle = StudentBundle(new, cfg, vocab, names)
    got = served.predict(None, records)
    assert list(got.columns) == list(expected.columns)
    assert dict(got.dtypes) == dict(expected.dtypes)
    pd.testing.assert_frame_equal(
        got.drop(columns="probability"), expected.drop(columns="probability")
    )
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=ATOL, rtol=0)
