"""Training, evaluation and teacher-feature alignment for LEADER(S). Importable without Kedro.

Adam, early stopping on val PRAUC (strict improvement, patience in epochs), best state reloaded,
seeded (python, numpy, torch, shuffling generator), tqdm progress, per-epoch loss terms and val
metrics (logged to MLflow by the caller through :mod:`leader_kedro.tracking`).

Speed (issue 10, docs/distill.md "Speed"): the train and val splits are encoded once; a batch is
cut out of the packed sets with a few index operations; the val split is batched once and scored
under ``torch.inference_mode``; Adam is the fused CPU kernel. :func:`train_students` trains every
(variant, seed) student of a run, side by side in ``training.workers`` single-threaded processes.

Distillation that weighs (issue 11, docs/distill.md): the KD target is the teacher feature
standardised with the train statistics the cache carries (``kd.standardise``); every epoch records
the share of each weighted loss term; the ``shuffled_kd`` control distils from teacher features
permuted across the train samples; :func:`tune_loss_weights` picks alpha / beta on val PRAUC.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from leader_kedro.config import as_dict, build_config
from leader_kedro.contracts import (
    FEATURES_COMMAND,
    ParameterError,
    StaleFeaturesError,
    aligned_teacher_features,
    group_masks,
    label_matrix,
    prediction_matrix,
    standardised_teacher_features,
)
from leader_kedro.evaluation.metrics import summary
from leader_kedro.student.model import (
    EncodedSamples,
    LeaderStudent,
    StudentBundle,
    StudentModelConfig,
    collate,
    encode_samples,
    make_config,
    predict_proba_encoded,
    student_loss,
)
from leader_kedro.torch_threads import torch_threads

logger = logging.getLogger(__name__)

#: Student variant -> the parts (config sections) it switches off.
VARIANTS: dict[str, dict[str, bool]] = {
    "main": {},
    "no_kd": {"kd": False},
    "no_align": {"align": False},
    # the main student distilled from teacher features shuffled across the train samples: a
    # control that tells what the teacher's per-patient information adds
    "shuffled_kd": {},
}
#: Variants trained on the teacher features permuted across the train samples
#: (:func:`shuffle_index`, drawn from the student's seed).
SHUFFLED_VARIANTS = frozenset({"shuffled_kd"})
#: The loss terms of :func:`student_loss` and their weights in the total.
LOSS_TERMS = ("bce", "kd", "align")


@dataclass(frozen=True)
class ProfileConfig:
    enabled: bool = True


@dataclass(frozen=True)
class KdConfig:
    enabled: bool = True
    alpha: float = 0.4
    standardise: bool = True


@dataclass(frozen=True)
class AlignConfig:
    enabled: bool = True
    beta: float = 0.005
    tau: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = 1e-3  # with batch 32: chosen on val (docs/distill.md "Training schedule")
    weight_decay: float = 0.0
    batch_size: int = 32
    eval_batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    seed: int = 42
    n_seeds: int = 5
    workers: int | None = None
    num_threads: int | None = 1
    progress: bool = True

    @property
    def seeds(self) -> tuple[int, ...]:
        """``seed, seed + 1, ..., seed + n_seeds - 1``; the first one gives the main model."""
        return tuple(self.seed + k for k in range(self.n_seeds))


@dataclass(frozen=True)
class TuningConfig:
    """``distill.tuning``: alpha x beta grid of the main student, scored by best-epoch val PRAUC."""

    enabled: bool = False
    alphas: tuple[float, ...] = (0.1, 0.4, 1.6, 6.4)
    betas: tuple[float, ...] = (0.001, 0.005, 0.02)
    seeds: int = 1

    def __post_init__(self):
        for name in ("alphas", "betas"):
            values = getattr(self, name)
            if not values or any(v < 0 for v in values):
                raise ParameterError(
                    f"distill.tuning.{name} must be a non-empty list of weights >= 0, got "
                    f"{list(values)}"
                )
        if self.seeds < 1:
            raise ParameterError(f"distill.tuning.seeds must be >= 1, got {self.seeds}")


@dataclass(frozen=True)
class RegistryConfig:
    enabled: bool = True
    model_name: str = "leader-student"
    artifact_name: str = "leader_student"
    top_k: int = 10


@dataclass(frozen=True)
class DistillConfig:
    """``params:distill`` (conf/base/parameters_distill.yml documents every field)."""

    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    kd: KdConfig = field(default_factory=KdConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    threshold: float = 0.3
    ablations: bool = True
    check_features: bool = True
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)

    def __post_init__(self):
        if self.align.tau <= 0:
            raise ParameterError(f"distill.align.tau must be > 0, got {self.align.tau}")
        if self.training.batch_size < 1 or self.training.max_epochs < 1:
            raise ParameterError(
                "distill.training.batch_size and distill.training.max_epochs must be >= 1, got "
                f"{self.training.batch_size} and {self.training.max_epochs}"
            )
        workers = self.training.workers
        if self.training.n_seeds < 1 or (workers is not None and workers < 1):
            raise ParameterError(
                "distill.training.n_seeds and distill.training.workers must be >= 1, got "
                f"{self.training.n_seeds} and {self.training.workers}"
            )

    @property
    def variants(self) -> tuple[str, ...]:
        """The student variants a run trains: the main one, and the ablations when switched on."""
        return tuple(VARIANTS) if self.ablations else ("main",)


def distill_config(params: Mapping[str, Any] | DistillConfig | None) -> DistillConfig:
    """The typed ``distill`` config from its parameter tree (built once, in the node)."""
    if isinstance(params, DistillConfig):
        return params
    return build_config(DistillConfig, params, "distill")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def variant_config(cfg: DistillConfig, variant: str, seed: int | None = None) -> DistillConfig:
    """``cfg`` with the ablation switches of ``variant`` turned off (and ``seed`` as its seed)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown student variant '{variant}'; expected one of {sorted(VARIANTS)}")
    for section, enabled in VARIANTS[variant].items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), enabled=enabled)})
    if seed is not None:
        cfg = replace(cfg, training=replace(cfg.training, seed=int(seed)))
    return cfg


def with_loss_weights(
    cfg: DistillConfig, alpha: float | None = None, beta: float | None = None
) -> DistillConfig:
    """``cfg`` with ``kd.alpha`` / ``align.beta`` replaced (None keeps the config's value)."""
    if alpha is not None:
        cfg = replace(cfg, kd=replace(cfg.kd, alpha=float(alpha)))
    if beta is not None:
        cfg = replace(cfg, align=replace(cfg.align, beta=float(beta)))
    return cfg


def shuffle_index(n: int, seed: int) -> torch.Tensor:
    """The source row of each train sample's teacher feature in the shuffled-features control.

    A random n-cycle drawn with a ``torch.Generator`` seeded with ``seed``: the samples in a
    random order, each one taking the features of the next (the last those of the first), so
    every sample gets another sample's features (n >= 2) and the rows stay the same multiset.
    """
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    source = torch.empty(n, dtype=torch.long)
    source[order] = order.roll(-1)
    return source


def model_config(cfg: DistillConfig, vocab: dict, teacher_hidden_size: int | None) -> dict:
    """The saved model config (:func:`make_config`) of a student trained with ``cfg``."""
    overrides = {
        **as_dict(cfg.model),
        "kd_enabled": cfg.kd.enabled,
        "align_enabled": cfg.align.enabled,
        "profile_enabled": cfg.profile.enabled,
        "teacher_hidden_size": teacher_hidden_size if cfg.kd.enabled else None,
    }
    return make_config(vocab, overrides)


def evaluate_groups(
    samples: pd.DataFrame, probs: np.ndarray, vocab: dict, threshold: float
) -> dict:
    """PRAUC / Jaccard / F1 (and the rest of :func:`metrics.summary`) overall, single-, multi-visit."""
    if len(samples) != len(probs):
        raise ValueError(f"{len(samples)} samples but {len(probs)} prediction rows")
    y, _ = label_matrix(samples, vocab)
    masks = group_masks(samples)
    out: dict = {"n": {group: int(mask.sum()) for group, mask in masks.items()}}
    for group, mask in masks.items():
        out[group] = summary(y[mask], probs[mask], threshold) if mask.any() else None
    return out


# --------------------------------------------------------------------------------------------
# Splits encoded once
# --------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything a student's training needs, encoded once and shared by every (variant, seed)."""

    vocab: dict
    code_names: dict | None
    train: EncodedSamples
    val: EncodedSamples
    test: EncodedSamples | None
    teacher_hidden: torch.Tensor | None  # [N_train, H] float32, rows in train order
    teacher_standardised: bool = False  # teacher_hidden standardised with the train statistics


def _check_splits(train_samples: pd.DataFrame, val_samples: pd.DataFrame) -> None:
    if len(train_samples) == 0 or len(val_samples) == 0:
        raise ValueError(
            f"student training needs non-empty samples_train and samples_val "
            f"(got {len(train_samples)} and {len(val_samples)} rows)"
        )


def prepare(
    cfg: DistillConfig,
    train_samples: pd.DataFrame,
    val_samples: pd.DataFrame,
    vocab: dict,
    teacher_features: dict | None = None,
    code_names: dict | None = None,
    test_samples: pd.DataFrame | None = None,
    need_teacher: bool | None = None,
) -> Prepared:
    """Encode the splits (and align the teacher features to the train rows) once.

    With ``kd.standardise`` the teacher features are standardised per dimension with the train
    statistics the cache carries (:func:`contracts.standardised_teacher_features`); a cache
    without them is refused with the command that rebuilds it."""
    _check_splits(train_samples, val_samples)
    need_teacher = cfg.kd.enabled if need_teacher is None else need_teacher
    teacher_hidden = None
    if need_teacher:
        if teacher_features is None:
            raise ValueError(
                f"distill.kd.enabled is true but no teacher_features were given; make them with "
                f"`{FEATURES_COMMAND}` or set distill.kd.enabled: false"
            )
        ids = [str(s) for s in train_samples["sample_id"]]
        if cfg.kd.standardise:
            meta = dict(teacher_features.get("metadata") or {})
            if not meta.get("standardisation"):
                raise StaleFeaturesError(
                    "teacher_features_train carries no standardisation statistics (made before "
                    "they were stored, or the train extraction was switched off), and "
                    f"distill.kd.standardise is true; rebuild it with `{FEATURES_COMMAND}` or set "
                    "distill.kd.standardise: false to distil from the raw features"
                )
            teacher_hidden = standardised_teacher_features(teacher_features, ids)
        else:
            teacher_hidden = aligned_teacher_features(teacher_features, ids).float()
    m = cfg.model

    def enc(samples):
        return encode_samples(samples, vocab, m.max_visits, m.max_codes)

    return Prepared(
        vocab=vocab,
        code_names=code_names,
        train=enc(train_samples),
        val=enc(val_samples),
        test=enc(test_samples) if test_samples is not None else None,
        teacher_hidden=teacher_hidden,
        teacher_standardised=bool(teacher_hidden is not None and cfg.kd.standardise),
    )


def train_student(
    train_samples: pd.DataFrame,
    val_samples: pd.DataFrame,
    vocab: dict,
    params: DistillConfig | Mapping,
    teacher_features: dict | None = None,
    code_names: dict | None = None,
    variant: str = "main",
) -> tuple[StudentBundle, dict]:
    """Train one student in this process (``params``: the distill config, ablation switches
    already applied). Returns the best-on-val :class:`StudentBundle` and a training history dict."""
    cfg = distill_config(params)
    prepared = prepare(cfg, train_samples, val_samples, vocab, teacher_features, code_names)
    return fit(cfg, prepared, variant)


def fit(
    cfg: DistillConfig, prepared: Prepared, variant: str = "main"
) -> tuple[StudentBundle, dict]:
    """Train one student with ``cfg`` (its seed: ``cfg.training.seed``) on prepared splits.

    A variant of :data:`SHUFFLED_VARIANTS` distils from the prepared teacher rows permuted by
    :func:`shuffle_index` with its seed."""
    teacher_hidden = prepared.teacher_hidden if cfg.kd.enabled else None
    if teacher_hidden is not None and variant in SHUFFLED_VARIANTS:
        teacher_hidden = teacher_hidden.index_select(
            0, shuffle_index(len(teacher_hidden), cfg.training.seed)
        )
    model_cfg = model_config(
        cfg, prepared.vocab, int(teacher_hidden.shape[1]) if teacher_hidden is not None else None
    )
    # the student's ops are tiny: one intra-op thread avoids sync overhead (10x on a busy CPU)
    with torch_threads(cfg.training.num_threads):
        return _fit(cfg, model_cfg, prepared, teacher_hidden, variant)


def _fit(cfg: DistillConfig, model_cfg: dict, prepared: Prepared, teacher_hidden, variant: str):
    tr = cfg.training
    enc_train, enc_val = prepared.train, prepared.val
    alpha = cfg.kd.alpha if cfg.kd.enabled else 0.0
    beta = cfg.align.beta if cfg.align.enabled else 0.0
    tau = cfg.align.tau
    y_val = enc_val.targets
    seed_everything(tr.seed)
    model = LeaderStudent(model_cfg)
    optim = torch.optim.Adam(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay, fused=True)
    gen = torch.Generator().manual_seed(tr.seed)
    n = len(enc_train)
    # the val split is batched once; the alignment's target sets only when they are used
    n_val = len(enc_val)
    val_batches = [
        collate(
            enc_val,
            np.arange(s, min(n_val, s + tr.eval_batch_size)),
            target_sets=False,
            for_training=False,
        )
        for s in range(0, n_val, tr.eval_batch_size)
    ]
    need_targets = bool(beta)

    from tqdm.auto import tqdm

    history: list[dict] = []
    best: dict[str, Any] = {"epoch": -1, "val_prauc": -np.inf, "state": None}
    bad_epochs = 0
    started = time.perf_counter()
    train_seconds = 0.0
    bar = tqdm(
        range(1, tr.max_epochs + 1),
        desc=f"student[{variant}, seed {tr.seed}]",
        disable=not tr.progress,
    )
    for epoch in bar:
        t_epoch = time.perf_counter()
        model.train()
        sums = torch.zeros(4)
        order = torch.randperm(n, generator=gen).numpy()
        steps = 0
        for s in range(0, n, tr.batch_size):
            batch = collate(enc_train, order[s : s + tr.batch_size], teacher_hidden, need_targets)
            terms = student_loss(model, batch, alpha=alpha, beta=beta, tau=tau)
            optim.zero_grad(set_to_none=True)
            terms["total"].backward()
            optim.step()
            sums += torch.stack(
                [
                    terms["total"].detach(),
                    terms["bce"].detach(),
                    terms["kd"].detach(),
                    terms["align"].detach(),
                ]
            )
            steps += 1
        train_seconds += time.perf_counter() - t_epoch
        model.eval()
        with torch.inference_mode():
            probs = torch.cat([torch.sigmoid(model(b)["logits"]) for b in val_batches]).numpy()
        val = summary(y_val, probs, cfg.threshold)
        means = (sums / steps).tolist()
        row: dict[str, Any] = {"epoch": epoch}
        row.update(
            {f"train_{k}": v for k, v in zip(("total", "bce", "kd", "align"), means, strict=True)}
        )
        row.update(loss_shares(row, alpha, beta))
        row.update({f"val_{k}": val[k] for k in ("prauc", "jaccard", "f1", "n_med")})
        history.append(row)
        val_prauc = float(row["val_prauc"])
        bar.set_postfix(loss=f"{row['train_total']:.4f}", val_prauc=f"{val_prauc:.4f}")
        if val_prauc > best["val_prauc"] or best["state"] is None:
            best = {
                "epoch": epoch,
                "val_prauc": val_prauc,
                "state": copy.deepcopy(model.state_dict()),
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= tr.patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    seconds = time.perf_counter() - started
    bundle = StudentBundle(model, model_cfg, prepared.vocab, prepared.code_names)
    samples_seen = n * len(history)
    info = {
        "variant": variant,
        "seed": tr.seed,
        "best_epoch": best["epoch"],
        "best_val_prauc": best["val_prauc"],
        "epochs_run": len(history),
        "train_seconds": round(seconds, 3),
        "train_samples_per_second": round(samples_seen / train_seconds, 1)
        if train_seconds
        else None,
        "n_parameters": bundle.n_parameters,
        "loss_weights": {"alpha": alpha, "beta": beta, "tau": tau},
        "kd_standardised": prepared.teacher_standardised if teacher_hidden is not None else None,
        "kd_shuffled": teacher_hidden is not None and variant in SHUFFLED_VARIANTS,
        "config": model_cfg,
        "encoding_report": {"train": enc_train.report, "val": enc_val.report},
        "history": history,
    }
    logger.info(
        "student[%s, seed %d]: best val PRAUC %.4f at epoch %d of %d (%.1fs, %d parameters)",
        variant,
        tr.seed,
        best["val_prauc"],
        best["epoch"],
        len(history),
        seconds,
        bundle.n_parameters,
    )
    return bundle, info


def loss_shares(row: Mapping[str, Any], alpha: float, beta: float) -> dict[str, float | None]:
    """``share_bce`` / ``share_kd`` / ``share_align``: the epoch mean of each WEIGHTED loss term
    (bce, alpha * kd, beta * align; ``train_kd`` and ``train_align`` are unweighted) over the
    epoch-mean total. The terms are >= 0, so the shares lie in [0, 1] and sum to 1."""
    weighted = {
        "bce": float(row["train_bce"]),
        "kd": alpha * float(row["train_kd"]),
        "align": beta * float(row["train_align"]),
    }
    total = float(row["train_total"])
    if not total > 0:
        return {f"share_{k}": None for k in LOSS_TERMS}
    return {f"share_{k}": weighted[k] / total for k in LOSS_TERMS}


# --------------------------------------------------------------------------------------------
# Every (variant, seed) student of a run, side by side
# --------------------------------------------------------------------------------------------
@dataclass
class TrainedStudent:
    variant: str
    seed: int
    bundle: StudentBundle
    info: dict
    val_probs: np.ndarray
    test_probs: np.ndarray | None
    #: the (alpha, beta) this student was trained with when they replaced the config's
    loss_weights: tuple[float, float] | None = None


#: One student to train: variant, seed, and (alpha, beta) replacing the config's (or None).
Job = tuple[str, int, tuple[float, float] | None]


def _job(
    cfg: DistillConfig,
    prepared: Prepared,
    variant: str,
    seed: int,
    weights: tuple[float, float] | None = None,
) -> TrainedStudent:
    vcfg = variant_config(with_loss_weights(cfg, *(weights or (None, None))), variant, seed)
    bundle, info = fit(vcfg, prepared, variant)
    bs = cfg.training.eval_batch_size
    # one thread: the other cores are busy with the other students
    val = predict_proba_encoded(bundle.module, prepared.val, bs, workers=1)
    test = (
        predict_proba_encoded(bundle.module, prepared.test, bs, workers=1)
        if prepared.test is not None
        else None
    )
    return TrainedStudent(variant, seed, bundle, info, val, test, weights)


_WORKER_STATE: dict[str, Any] = {}


def _worker_init(cfg: DistillConfig, prepared: Prepared) -> None:
    torch.set_num_threads(cfg.training.num_threads or 1)
    _WORKER_STATE.update(cfg=cfg, prepared=prepared)


def _worker_job(job: Job) -> tuple[dict, dict, np.ndarray, np.ndarray | None]:
    done = _job(_WORKER_STATE["cfg"], _WORKER_STATE["prepared"], *job)
    state = {k: v.detach().clone() for k, v in done.bundle.module.state_dict().items()}
    return state, done.info, done.val_probs, done.test_probs


def default_workers() -> int:
    """One process per CPU core, plus one: jobs of equal length (the students of one run) then
    share the cores at the end instead of one of them running alone (3 on 2 cores: the three
    variants of a seed finish together)."""
    return (os.cpu_count() or 1) + 1


def _start_method(threads: int | None) -> str:
    """``fork`` (no re-import) when each worker uses one thread; a forked child that opens an
    OpenMP thread pool its parent already used can hang, so more threads use ``spawn``."""
    import multiprocessing as mp

    if (threads or 1) == 1 and "fork" in mp.get_all_start_methods():
        return "fork"
    return "spawn"


#: Relative length of each variant's training, for the job order of :func:`train_students`.
VARIANT_COST = {"main": 0, "shuffled_kd": 1, "no_align": 2, "no_kd": 3}


def train_students(
    cfg: DistillConfig,
    prepared: Prepared,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    loss_weights: Sequence[tuple[float, float]] | None = None,
) -> list[TrainedStudent]:
    """Train every (variant, seed) student, in ``cfg.training.workers`` processes when there is
    more than one job (results in job order: variants in the given order, seeds inside).

    With ``loss_weights`` (a list of (alpha, beta)) every (variant, seed) student is trained once
    per pair, the pairs outermost in the job order (the loss-weight grid of
    :func:`tune_loss_weights`)."""
    variants = tuple(variants or cfg.variants)
    seeds = tuple(seeds or cfg.training.seeds)
    pairs: tuple[tuple[float, float] | None, ...] = (
        tuple((float(a), float(b)) for a, b in loss_weights) if loss_weights else (None,)
    )
    jobs: list[Job] = [(v, s, w) for w in pairs for v in variants for s in seeds]
    workers = min(cfg.training.workers or default_workers(), len(jobs))
    if workers <= 1:
        return [_job(cfg, prepared, *job) for job in jobs]
    import multiprocessing as mp

    quiet = replace(cfg, training=replace(cfg.training, progress=False))
    method = _start_method(cfg.training.num_threads)
    if method == "fork":  # torch.optim imports torch._dynamo on first use (~1 s): once, here
        import torch._dynamo  # noqa: F401
    ctx = mp.get_context(method)
    # the longest jobs first, so that the last ones to start are short (the no-KD student stops
    # earliest; the no-alignment one has no target sets to encode; the shuffled-features control
    # costs as much per epoch as the main student but tends to stop earlier): returned in job order
    order = sorted(range(len(jobs)), key=lambda j: (VARIANT_COST.get(jobs[j][0], 0), j))
    with ctx.Pool(workers, initializer=_worker_init, initargs=(quiet, prepared)) as pool:
        done = pool.map(_worker_job, [jobs[j] for j in order], chunksize=1)
    results = dict(zip(order, done, strict=True))
    out = []
    for (variant, seed, weights), (state, info, val, test) in zip(
        jobs, (results[j] for j in range(len(jobs))), strict=True
    ):
        module = LeaderStudent(info["config"])
        module.load_state_dict(state)
        bundle = StudentBundle(module, info["config"], prepared.vocab, prepared.code_names)
        out.append(TrainedStudent(variant, seed, bundle, info, val, test, weights))
    return out


# --------------------------------------------------------------------------------------------
# alpha / beta chosen on val
# --------------------------------------------------------------------------------------------
TUNING_SELECTION = "val PRAUC"


def tuning_grid(cfg: DistillConfig) -> list[tuple[float, float]]:
    """The (alpha, beta) pairs :func:`tune_loss_weights` trains: ``tuning.alphas`` x
    ``tuning.betas``, alphas outermost; a part switched off in the main config keeps its single
    configured weight (there is nothing to tune)."""
    t = cfg.tuning
    alphas = t.alphas if cfg.kd.enabled else (cfg.kd.alpha,)
    betas = t.betas if cfg.align.enabled else (cfg.align.beta,)
    return [(float(a), float(b)) for a in alphas for b in betas]


def untuned(cfg: DistillConfig) -> dict[str, Any]:
    """``kd_tuning`` when tuning is off: the configured weights, nothing trained."""
    return {
        "enabled": False,
        "chosen": {"alpha": cfg.kd.alpha, "beta": cfg.align.beta},
        "selection": "configured (distill.kd.alpha, distill.align.beta)",
    }


def tune_loss_weights(cfg: DistillConfig, prepared: Prepared) -> dict[str, Any]:
    """Train the main student over :func:`tuning_grid` on the train split (``tuning.seeds`` seeds
    from ``training.seed``, side by side in ``training.workers`` processes) and choose the pair of
    the highest mean best-epoch val PRAUC (the first in grid order on a tie). Reads train and val
    only. With ``tuning.enabled`` false returns :func:`untuned` without training."""
    if not cfg.tuning.enabled:
        return untuned(cfg)
    grid = tuning_grid(cfg)
    seeds = tuple(cfg.training.seed + k for k in range(cfg.tuning.seeds))
    started = time.perf_counter()
    trained = train_students(cfg, prepared, ("main",), seeds, grid)
    rows = []
    for alpha, beta in grid:
        runs = [t for t in trained if t.loss_weights == (alpha, beta)]
        rows.append(
            {
                "alpha": alpha,
                "beta": beta,
                "val_prauc": float(np.mean([t.info["best_val_prauc"] for t in runs])),
                "best_epoch": int(runs[0].info["best_epoch"]),
                "by_seed": [
                    {
                        "seed": t.seed,
                        "val_prauc": float(t.info["best_val_prauc"]),
                        "best_epoch": int(t.info["best_epoch"]),
                        "epochs_run": int(t.info["epochs_run"]),
                    }
                    for t in runs
                ],
            }
        )
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_prauc"], -i))
    chosen = {"alpha": rows[best]["alpha"], "beta": rows[best]["beta"]}
    logger.info(
        "loss weights tuned on val PRAUC over %d pairs x %d seed(s): alpha %g, beta %g "
        "(val PRAUC %.4f; configured alpha %g, beta %g) in %.1fs",
        len(grid),
        len(seeds),
        chosen["alpha"],
        chosen["beta"],
        rows[best]["val_prauc"],
        cfg.kd.alpha,
        cfg.align.beta,
        time.perf_counter() - started,
    )
    return {
        "enabled": True,
        "selection": TUNING_SELECTION,
        "chosen": chosen,
        "chosen_val_prauc": rows[best]["val_prauc"],
        "configured": {"alpha": cfg.kd.alpha, "beta": cfg.align.beta},
        "seeds": list(seeds),
        "max_epochs": cfg.training.max_epochs,
        "grid": rows,
    }


def compare_predictions(
    samples: pd.DataFrame,
    vocab: dict,
    predictions: dict[str, pd.DataFrame | None],
    threshold: float = 0.3,
) -> dict:
    """Metrics per model and patient group for prediction tables aligned to ``samples`` by sample_id.

    Empty or missing tables (a skipped ablation) give ``None`` for that model.
    """
    meds = list(vocab["medication"])
    out: dict = {"threshold": threshold, "test": {}, "groups": None}
    for name, frame in predictions.items():
        if frame is None or len(frame) == 0:
            out["test"][name] = None
            continue
        probs = prediction_matrix(frame, samples, meds, f"{name}_predictions_test")
        result = evaluate_groups(samples, probs, vocab, threshold)
        out["groups"] = result.pop("n")
        out["test"][name] = result
    return out
