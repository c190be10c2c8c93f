"""The teacher feature cache: pooled final hidden states per sample, float16, fingerprinted.

The student distils from these cached vectors (offline KD, as in the paper) instead of running the
teacher every batch. A fingerprint ties the cache to what produced it (teacher adapter + head,
backbone/tokenizer, max_length, sample ids and prompt texts, and the standardisation statistics):
:func:`check_fresh` refuses a cache whose fingerprint does not match and says which command
refreshes it.

Standardisation: the per-dimension mean and standard deviation of the TRAIN features
(:func:`standardisation_stats`) are stored in the metadata of every split's cache (val and test
carry the train statistics, never their own) and enter its fingerprint. The student reads
standardised features with :func:`leader_kedro.contracts.standardised_teacher_features` (or
:func:`standardise` here), so that its distillation term weighs patient-specific variation rather
than the features' shared mean.

Importable without Kedro; torch is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.config import build_config
from leader_kedro.contracts import FEATURES_COMMAND, StaleFeaturesError
from leader_kedro.teacher.distributed import DistributedConfig

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "leader-features-v2"  # v2: the standardisation statistics are fingerprinted
#: a dimension whose train std is below this share of the median std is divided by that floor
#: instead: near-constant on train (float16 steps), it would blow val/test differences up
STD_FLOOR_RELATIVE = 1e-2


@dataclass(frozen=True)
class FeaturesConfig:
    """``params:features`` (conf/base/parameters_features.yml)."""

    splits: tuple[str, ...] = ("train", "val", "test")
    batch_size: int = 32
    sort_by_length: bool = True
    progress: bool = True  # a tqdm bar per split (prompts/s)
    # > 1 processes: workers launched by torchrun/accelerate share the prompts, rank 0 gathers
    distributed: DistributedConfig = DistributedConfig()


def features_config(params) -> FeaturesConfig:
    return build_config(FeaturesConfig, params, "features")


def _card_value(teacher_card: Mapping[str, Any], key: str) -> Any:
    if not isinstance(teacher_card, Mapping) or key not in teacher_card:
        raise ValueError(
            f"teacher_card has no '{key}' (keys: {sorted(teacher_card) if isinstance(teacher_card, Mapping) else type(teacher_card).__name__}); "
            "re-make it with `kedro run --pipeline=teacher`"
        )
    return teacher_card[key]


def _tokenizer_name(teacher_card: Mapping[str, Any]) -> str:
    return str(teacher_card.get("tokenizer") or _card_value(teacher_card, "backbone"))


def prompts_hash(prompts: pd.DataFrame) -> str:
    """sha256 over the sample ids and prompt texts, in row order."""
    for col in ("sample_id", "prompt"):
        if col not in prompts.columns:
            raise ValueError(
                f"prompts table has no '{col}' column (columns: {list(prompts.columns)}); "
                "make it with `kedro run --pipeline=prompts`"
            )
    h = hashlib.sha256()
    for sid, text in zip(
        prompts["sample_id"].astype(str), prompts["prompt"].astype(str), strict=True
    ):
        h.update(sid.encode())
        h.update(b"\x1f")
        h.update(text.encode())
        h.update(b"\x1e")
    return h.hexdigest()


def _ids_hash(sample_ids: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(map(str, sample_ids)).encode()).hexdigest()


def provenance(teacher_card: Mapping[str, Any], prompts: pd.DataFrame) -> dict[str, Any]:
    """The components the fingerprint is made of (also stored in the cache's metadata)."""
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "teacher_fingerprint": str(_card_value(teacher_card, "fingerprint")),
        "backbone": str(_card_value(teacher_card, "backbone")),
        "tokenizer": _tokenizer_name(teacher_card),
        "max_length": int(_card_value(teacher_card, "max_length")),
        "pooling": str(teacher_card.get("pooling", "")),
        "prompts_sha256": prompts_hash(prompts),
        "sample_ids_sha256": _ids_hash(prompts["sample_id"].astype(str).tolist()),
        "n_samples": len(prompts),
    }


def expected_fingerprint(
    teacher_card: Mapping[str, Any],
    prompts: pd.DataFrame,
    standardisation: Mapping[str, Any] | None = None,
) -> str:
    """Hash of the teacher fingerprint, backbone/tokenizer, max_length, sample ids and prompt texts,
    and (when given) the digest of the train standardisation statistics the cache carries."""
    prov: dict[str, Any] = provenance(teacher_card, prompts)
    if standardisation is not None:
        prov["standardisation_sha256"] = stats_digest(standardisation)
    return hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------ standardisation
def stats_digest(stats: Mapping[str, Any]) -> str:
    """sha256 of the statistics' values (source split, n, floor, mean and std as float32)."""
    mean = np.asarray(stats["mean"], dtype=np.float32)
    std = np.asarray(stats["std"], dtype=np.float32)
    h = hashlib.sha256()
    h.update(json.dumps([stats.get("source_split"), stats.get("n"), stats.get("floor")]).encode())
    h.update(mean.tobytes())
    h.update(std.tobytes())
    return h.hexdigest()


def standardisation_stats(hidden: Any, source_split: str = "train") -> dict[str, Any]:
    """Per-dimension mean and std (population, float32) of the cached features ``hidden`` [N, H].

    Computed from the float16 values the cache stores (what the student reads), in float64.
    A dimension whose std is below ``floor`` = :data:`STD_FLOOR_RELATIVE` x the median std is
    divided by the floor instead (``n_floored`` counts them). The returned dict is JSON-able and
    holds its own ``sha256``.
    """
    import torch

    values = torch.as_tensor(hidden).to(torch.float16).double().numpy()
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(
            f"standardisation needs at least 2 {source_split} feature rows, got shape {values.shape}"
        )
    mean = values.mean(0).astype(np.float32)
    std = values.std(0).astype(np.float32)
    floor = float(np.float32(max(STD_FLOOR_RELATIVE * float(np.median(std)), 1e-12)))
    floored = std < floor
    std = np.where(floored, np.float32(floor), std).astype(np.float32)
    stats: dict[str, Any] = {
        "source_split": source_split,
        "n": int(values.shape[0]),
        "floor": floor,
        "n_floored": int(floored.sum()),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
    }
    stats["sha256"] = stats_digest(stats)
    # how much of the raw features is the shared mean (issue 11: ~0.6 mean pairwise cosine)
    raw_sq = float((values**2).sum(1).mean())
    stats["summary"] = {
        "mean_std": float(std.mean()),
        "min_std": float(std.min()),
        "max_std": float(std.max()),
        "mean_variance": float((std.astype(np.float64) ** 2).mean()),
        "shared_mean_share_of_squared_norm": float((mean.astype(np.float64) ** 2).sum() / raw_sq)
        if raw_sq > 0
        else None,
    }
    return stats


def with_standardisation(
    cache: dict[str, Any],
    stats: Mapping[str, Any] | None,
    teacher_card: Mapping[str, Any],
    prompts: pd.DataFrame,
    reason: str | None = None,
) -> dict[str, Any]:
    """``cache`` carrying ``stats`` (the TRAIN statistics) in its metadata and fingerprint.

    ``stats`` None (no train features to take them from) records ``reason`` instead; such a
    cache cannot be standardised. A skipped cache is returned unchanged.
    """
    meta = dict(cache.get("metadata") or {})
    if meta.get("skipped"):
        return cache
    if stats is None:
        meta["standardisation"] = None
        meta["standardisation_missing"] = reason or "no train statistics"
        return {**cache, "metadata": meta}
    if stats_digest(stats) != stats.get("sha256"):
        raise StaleFeaturesError(
            "the standardisation statistics do not match their sha256: the train feature cache "
            f"was modified. Refresh it with `{FEATURES_COMMAND}`."
        )
    meta["standardisation"] = dict(stats)
    return {
        **cache,
        "metadata": meta,
        "fingerprint": expected_fingerprint(teacher_card, prompts, stats),
    }


def train_stats_of(train_features: Mapping[str, Any]) -> dict[str, Any] | None:
    """The standardisation statistics a train cache carries (None when it has none)."""
    meta = dict(train_features.get("metadata") or {}) if isinstance(train_features, Mapping) else {}
    stats = meta.get("standardisation")
    return dict(stats) if stats else None


def check_same_standardisation(
    features: Mapping[str, Any], train_features: Mapping[str, Any], name: str
) -> None:
    """Raise :class:`StaleFeaturesError` unless ``features`` carry the train cache's statistics."""
    mine = (dict(features.get("metadata") or {}).get("standardisation") or {}).get("sha256")
    train = (train_stats_of(train_features) or {}).get("sha256")
    if not train or mine != train:
        raise StaleFeaturesError(
            f"{name} does not carry the standardisation statistics of teacher_features_train "
            f"({str(mine)[:12]} vs {str(train)[:12]}): the caches come from different runs. "
            f"Refresh them with `{FEATURES_COMMAND}`."
        )


def standardise(hidden: Any, stats: Mapping[str, Any]):
    """``(hidden - mean) / std`` per dimension, float32 torch tensor, with the given statistics."""
    import torch

    x = torch.as_tensor(hidden).float()
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != mean.numel():
        raise StaleFeaturesError(
            f"features of shape {tuple(x.shape)} do not match standardisation statistics of "
            f"{mean.numel()} dimensions; refresh them with `{FEATURES_COMMAND}`"
        )
    return (x - mean) / std


def check_fresh(
    features: Mapping[str, Any],
    teacher_card: Mapping[str, Any],
    prompts: pd.DataFrame,
    name: str = "teacher_features_train",
) -> None:
    """Raise :class:`StaleFeaturesError` unless ``features`` were made by this teacher from these prompts.

    The message names the artifact, says why it is stale (teacher changed / prompts changed /
    sample ids differ / extraction skipped) and gives the command that refreshes it.
    """
    if not isinstance(features, Mapping):
        raise StaleFeaturesError(
            f"{name} is not a feature cache (got {type(features).__name__}); "
            f"refresh it with `{FEATURES_COMMAND}`"
        )
    meta = dict(features.get("metadata") or {})
    stats = meta.get("standardisation") or None
    if stats is not None and (
        not isinstance(stats, Mapping)
        or any(k not in stats for k in ("mean", "std", "sha256"))
        or stats_digest(stats) != stats["sha256"]
    ):
        raise StaleFeaturesError(
            f"{name} is stale: its standardisation statistics were modified (they no longer "
            f"match their sha256). Refresh it with `{FEATURES_COMMAND}`."
        )
    expected = expected_fingerprint(teacher_card, prompts, stats)
    ids = [str(s) for s in features.get("sample_ids") or []]
    hidden = features.get("hidden")
    n_rows = int(hidden.shape[0]) if hidden is not None and hasattr(hidden, "shape") else -1
    problems = []
    if meta.get("skipped"):
        problems.append(f"extraction was skipped ({meta.get('reason', 'switched off')})")
    if n_rows != len(ids):
        problems.append(
            f"the cache is inconsistent ({n_rows} hidden rows for {len(ids)} sample ids)"
        )
    if features.get("fingerprint") != expected:
        card_fp = str(_card_value(teacher_card, "fingerprint"))
        if meta.get("teacher_fingerprint") != card_fp:
            problems.append(
                f"the teacher changed (cache made by teacher {str(meta.get('teacher_fingerprint'))[:12]}, "
                f"current teacher_card says {card_fp[:12]})"
            )
        for key in ("backbone", "tokenizer", "max_length"):
            now = provenance(teacher_card, prompts)[key]
            if key in meta and meta[key] != now:
                problems.append(f"the {key} changed ({meta[key]!r} -> {now!r})")
        want_ids = prompts["sample_id"].astype(str).tolist()
        if ids != want_ids:
            missing = len(set(want_ids) - set(ids))
            extra = len(set(ids) - set(want_ids))
            first = next(
                (k for k, (a, b) in enumerate(zip(ids, want_ids, strict=False)) if a != b),
                min(len(ids), len(want_ids)),
            )
            problems.append(
                f"sample ids differ ({len(ids)} cached vs {len(want_ids)} in the prompts; "
                f"{missing} missing, {extra} extra, first difference at row {first})"
            )
        elif meta.get("prompts_sha256") and meta.get("prompts_sha256") != prompts_hash(prompts):
            problems.append("the prompts changed (same sample ids, different prompt texts)")
        if not problems:
            problems.append("the fingerprint does not match (cache from another code version?)")
    if problems:
        raise StaleFeaturesError(
            f"{name} is stale: " + "; ".join(problems) + f". Refresh it with `{FEATURES_COMMAND}`."
        )


def extract_features(
    bundle: Any,
    teacher_card: Mapping[str, Any],
    prompts: pd.DataFrame,
    batch_size: int = 32,
    split: str = "train",
    sort_by_length: bool = True,
    progress: bool = False,
    distributed: DistributedConfig | None = None,
) -> dict[str, Any]:
    """Run the teacher over the prompts and return the cache dict (float16 hidden states).

    ``bundle`` is a ``teacher.TeacherBundle``; its ``encode`` already batches by length, and
    with ``sort_by_length`` the prompts are also handed over sorted by their token count (longest
    first, so a too-large batch fails at once) and the rows are put back in prompt order.
    ``distributed`` with ``processes > 1`` shares the prompts among that many worker processes
    (:mod:`leader_kedro.teacher.distributed`); the rows come back in prompt order all the same.
    """
    import torch

    card_fp = str(_card_value(teacher_card, "fingerprint"))
    bundle_fp = getattr(bundle, "fingerprint", None)
    if bundle_fp is not None and str(bundle_fp) != card_fp:
        raise StaleFeaturesError(
            f"teacher_model (fingerprint {str(bundle_fp)[:12]}) and teacher_card "
            f"(fingerprint {card_fp[:12]}) come from different teacher runs; "
            "re-make both with `kedro run --pipeline=teacher`"
        )
    max_length = int(_card_value(teacher_card, "max_length"))
    if "n_tokens" in prompts.columns and len(prompts):
        longest = int(prompts["n_tokens"].max())
        if longest > max_length:
            raise ValueError(
                f"prompts_{split} has prompts of up to {longest} tokens but the teacher reads only "
                f"{max_length} (teacher_card.max_length): the teacher would cut the current visit "
                "and the cue. Use the same value for params:prompts.max_length and the teacher, "
                "then `kedro run --pipeline=prompts`"
            )
    _check_tokenizer(bundle, prompts, split, teacher_card)
    if batch_size < 1:
        raise ValueError(f"params:features.batch_size must be >= 1, got {batch_size}")
    texts = prompts["prompt"].astype(str).tolist()
    order = np.arange(len(texts))
    if sort_by_length and "n_tokens" in prompts.columns:
        order = np.argsort(-prompts["n_tokens"].to_numpy(), kind="stable")
    start = time.perf_counter()
    if texts:
        ordered = [texts[i] for i in order]
        if distributed is not None and distributed.enabled:
            from leader_kedro.teacher import distributed as ddp

            hidden = ddp.encode(bundle, ordered, batch_size, distributed, progress)
        else:
            hidden, _ = bundle.encode(ordered, batch_size=batch_size, progress=progress)
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim != 2 or hidden.shape[0] != len(texts):
            raise ValueError(
                f"TeacherBundle.encode returned hidden states of shape {hidden.shape}, "
                f"expected [{len(texts)}, H]"
            )
        restored = np.empty_like(hidden)
        restored[order] = hidden
        hidden = restored
    else:
        hidden = np.zeros((0, int(teacher_card.get("hidden_size", 0))), dtype=np.float32)
    seconds = time.perf_counter() - start
    overflow = int(np.sum(np.abs(hidden) > np.finfo(np.float16).max))
    if overflow:
        raise ValueError(
            f"{overflow} hidden values of prompts_{split} exceed the float16 range "
            f"(max |x| = {float(np.abs(hidden).max()):.3g}); the cache stores float16"
        )
    if not np.isfinite(hidden).all():
        raise ValueError(f"the teacher returned non-finite hidden states for prompts_{split}")
    tensor = torch.from_numpy(hidden).to(torch.float16)
    abs_err = float(np.abs(tensor.float().numpy() - hidden).max()) if hidden.size else 0.0
    meta = {
        **provenance(teacher_card, prompts),
        "split": split,
        "hidden_size": int(tensor.shape[1]),
        "dtype": "float16",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "batch_size": int(batch_size),
        "extraction_seconds": round(seconds, 3),
        "float16_max_abs_error": abs_err,
        "padding_share": padding_waste(prompts["n_tokens"], batch_size)
        if "n_tokens" in prompts.columns
        else None,
        "processes": int(distributed.processes) if distributed is not None else 1,
        "skipped": False,
    }
    logger.info(
        "teacher features for %s: %d x %d in %.1fs",
        split,
        tensor.shape[0],
        tensor.shape[1],
        seconds,
    )
    return {
        "sample_ids": prompts["sample_id"].astype(str).tolist(),
        "hidden": tensor,
        "fingerprint": expected_fingerprint(teacher_card, prompts),
        "metadata": meta,
    }


def _check_tokenizer(
    bundle: Any, prompts: pd.DataFrame, split: str, teacher_card, n: int = 64
) -> None:
    """The prompts' ``n_tokens`` must have been counted with the teacher's own tokenizer."""
    tokenizer = getattr(bundle, "tokenizer", None)
    if tokenizer is None or "n_tokens" not in prompts.columns or not len(prompts):
        return
    head = prompts.iloc[:n]
    counted = [len(ids) for ids in tokenizer(head["prompt"].astype(str).tolist())["input_ids"]]
    differ = int(np.sum(np.asarray(counted) != head["n_tokens"].to_numpy()))
    if differ:
        raise ValueError(
            f"prompts_{split}: {differ} of the first {len(head)} prompts have another token count "
            f"with the teacher's tokenizer ({teacher_card.get('backbone')}) than recorded in "
            "n_tokens: the prompts were measured with another tokenizer. Set "
            "params:prompts.tokenizer to the teacher backbone and run `kedro run --pipeline=prompts`"
        )


def skipped_features(
    teacher_card: Mapping[str, Any], prompts: pd.DataFrame, split: str, reason: str
) -> dict[str, Any]:
    """An empty cache for a split whose extraction is switched off (check_fresh refuses it)."""
    import torch

    hidden_size = int(teacher_card.get("hidden_size", 0) or 0)
    meta = {
        **provenance(teacher_card, prompts),
        "split": split,
        "hidden_size": hidden_size,
        "dtype": "float16",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "skipped": True,
        "reason": reason,
    }
    return {
        "sample_ids": [],
        "hidden": torch.zeros((0, hidden_size), dtype=torch.float16),
        "fingerprint": "skipped",
        "metadata": meta,
    }


def padding_waste(n_tokens: Sequence[int] | np.ndarray, batch_size: int) -> dict[str, float]:
    """Share of padding tokens when batching in prompt order vs sorted by length."""
    lengths = np.asarray(n_tokens, dtype=np.int64)
    if lengths.size == 0 or batch_size < 1:
        return {"input_order": 0.0, "length_sorted": 0.0}

    def waste(arr: np.ndarray) -> float:
        padded = sum(
            int(arr[i : i + batch_size].max()) * len(arr[i : i + batch_size])
            for i in range(0, len(arr), batch_size)
        )
        return round(1.0 - float(arr.sum()) / padded, 4) if padded else 0.0

    return {"input_order": waste(lengths), "length_sorted": waste(np.sort(lengths))}


def storage_report(features: Mapping[str, Any], json_rows: int = 64) -> dict[str, Any]:
    """Bytes per sample of the float16 cache vs the paper's JSON-float lines (measured on rows)."""
    hidden = features["hidden"]
    n, h = int(hidden.shape[0]), int(hidden.shape[1]) if hidden.ndim == 2 else 0
    per_sample = h * 2
    report: dict[str, Any] = {
        "samples": n,
        "hidden_size": h,
        "bytes_per_sample_float16": per_sample,
        "tensor_bytes": n * per_sample,
    }
    if n and h:
        rows = hidden[: min(n, json_rows)].float().numpy()
        # the official code wrote the fp16 state as JSON floats, one list per sample
        json_bytes = np.mean([len(json.dumps([float(x) for x in r])) for r in rows])
        report["bytes_per_sample_json_floats"] = round(float(json_bytes), 1)
        report["json_over_float16"] = round(float(json_bytes) / per_sample, 2)
        report["bytes_per_sample_float16_at_4096"] = 4096 * 2
        report["bytes_per_sample_json_at_4096_estimate"] = round(float(json_bytes) / h * 4096, 1)
    return report
