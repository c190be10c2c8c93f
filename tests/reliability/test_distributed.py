"""The teacher across processes: DDP fine-tuning and sharded feature extraction on 2 CPU workers.

Both are launched by the stage's own node from a parameter (``teacher.distributed`` /
``features.distributed``) with torchrun on the gloo backend, as they would be on GPUs with nccl.
Two processes must give the same features as one (float tolerance), in prompt order, and only
the Kedro process writes outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from leader_kedro.pipelines.features import nodes as feature_nodes
from leader_kedro.pipelines.teacher import nodes as teacher_nodes
from leader_kedro.teacher import training as TT
from leader_kedro.teacher.distributed import DistributedConfig

#: 2 workers vs 1 process, float32 pooled states before the float16 cache (measured ~1e-7)
FEATURE_ATOL = 1e-5
DDP = {"processes": 2, "backend": "gloo", "launcher": "torchrun"}


def test_two_gloo_processes_train_the_teacher_and_extract_the_same_features(
    tiny_bert, tiny_cohort, tmp_path
):
    params = {
        "backbone": tiny_bert,
        "num_epochs": 1,
        "per_device_batch_size": 4,
        "max_length": 128,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "disable_tqdm": True,
        "lora": {"r": 4, "alpha": 8, "layers_to_transform": None},
        "resume_from_checkpoint": None,
        "distributed": DDP,
    }
    c = tiny_cohort
    bundle, history = teacher_nodes.train_teacher(
        c["prompts_train"], c["samples_train"], c["prompts_val"], c["samples_val"],
        c["vocab"], params, seed=3,
    )  # fmt: skip
    summary = history["summary"]
    assert summary["distributed"] == {"processes": 2, "backend": "gloo", "launcher": "torchrun"}
    # DDP: each of the 2 workers takes 4 prompts per step -> half the single-process steps
    assert summary["global_step"] == int(np.ceil(len(c["prompts_train"]) / 8))
    assert 0.0 <= summary["best_val_prauc"] <= 1.0
    # rank 0 alone wrote the checkpoints, each complete
    (run_dir,) = list((tmp_path / "ckpt").iterdir())
    checkpoints = list(run_dir.glob("checkpoint-*"))
    assert checkpoints and all(TT.checkpoint_is_complete(p) for p in checkpoints)
    assert bundle.fingerprint == bundle.config["fingerprint"]

    card = TT.teacher_card(bundle, {}, {}, history, 0.3)
    prompts = c["prompts_train"].copy()
    prompts["n_tokens"] = [len(ids) for ids in bundle.tokenizer(prompts["prompt"].tolist())["input_ids"]]  # fmt: skip
    one = feature_nodes.extract(
        bundle, card, prompts, {"batch_size": 4, "progress": False}, "train"
    )
    two = feature_nodes.extract(
        bundle, card, prompts, {"batch_size": 4, "progress": False, "distributed": DDP}, "train"
    )
    assert two["metadata"]["processes"] == 2 and one["metadata"]["processes"] == 1
    assert two["sample_ids"] == one["sample_ids"] == prompts["sample_id"].tolist()
    assert two["fingerprint"] == one["fingerprint"]
    diff = (two["hidden"].float() - one["hidden"].float()).abs().max().item()
    print(f"max |features(2 processes) - features(1 process)| = {diff:.3g}")
    assert diff <= FEATURE_ATOL
    # and in prompt order: row i is prompt i encoded alone
    direct, _ = bundle.encode(prompts["prompt"].tolist(), batch_size=1)
    np.testing.assert_allclose(two["hidden"].float().numpy(), direct, atol=2e-3)


def test_distributed_parameters_are_checked():
    from leader_kedro.contracts import ParameterError

    with pytest.raises(ParameterError, match="processes"):
        DistributedConfig(processes=0)
    with pytest.raises(ParameterError, match="backend"):
        DistributedConfig(backend="mpi")
    with pytest.raises(ParameterError, match="accelerate_config"):
        DistributedConfig(accelerate_config="fsdp.yaml")
    assert not DistributedConfig().enabled and DistributedConfig(processes=2).enabled


def test_accelerate_is_refused_without_gpus(tmp_path):
    """`accelerate launch --cpu` would start one process, not two: on CPU, torchrun is the way."""
    import torch

    from leader_kedro.contracts import ParameterError
    from leader_kedro.teacher.distributed import launch

    if torch.cuda.is_available():
        pytest.skip("GPUs present: accelerate is a valid launcher here")
    with pytest.raises(ParameterError, match="torchrun"):
        launch("encode", tmp_path, DistributedConfig(processes=2, launcher="accelerate"))
