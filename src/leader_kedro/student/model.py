"""LEADER(S): the ID-based student (docs/method.md §4), with the official code's defects fixed.

Importable without Kedro. Two halves:

* :class:`SampleEncoder` / :func:`encode_samples` turn ``samples_{split}`` rows (docs/contracts.md)
  or served patient records into *packed* code sets, once per split: the LAST ``max_visits`` visits
  are kept (fix C2), codes per visit are capped at ``max_codes`` and counted (fix B5), medications
  are shifted by one visit so that slot ``t`` holds the medications of visit ``t-1`` and slot 0 is
  left for the profile prompt, and the alignment targets are looked up as ``M_<code>`` token ids of
  the unified vocabulary (fix C3). :func:`collate` cuts a batch out of them with a few vectorised
  index operations (no Python loop over samples).
* :class:`LeaderStudent`, the torch module: shared type-prefixed code embedding, one 1-layer set
  transformer per code type + mean over the codes, profile encoder producing the pseudo medication
  record of the first visit, one visit transformer shared by the three streams (+ optional
  visit-position embeddings, W3), the ReLU-Linear-ReLU-Linear head, the KD projector and the
  alignment projectors. :func:`student_loss` = BCE + alpha * MSE(KD) + beta * symmetric InfoNCE
  with temperature tau (C7).

Speed (issue 10; docs/distill.md "Speed"): every per-code operation (layer norms, projections,
feed-forward, dropout) runs on the packed codes only, never on padding; only the attention sees a
padded view, with the sets grouped by length (one-code sets need no attention at all). The numbers
are those of the padded reference implementation (``student/legacy.py``) within float rounding:
tests/student/test_equivalence.py checks 1e-5 on the same weights and samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from itertools import chain, repeat
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from leader_kedro.contracts import predictions_frame
from leader_kedro.student import kernels
from leader_kedro.torch_threads import torch_threads

PAD = 0
#: The streams of a sample, in the order of the model's set transformers.
STREAMS = ("diagnoses", "procedures", "medications")
#: Batch-key prefix of each packed set kind (``targets``: the alignment's target medication sets).
PREFIX = {"diagnoses": "dx", "procedures": "px", "medications": "rx", "targets": "tg"}
#: Padded widths of the attention buckets; longer sets use the next multiple of 16. Widths that
#: are multiples of 16 keep the CPU attention kernels on their vectorised paths (a set of 8 costs
#: more than a set of 16); a set of one code needs no attention at all.
BUCKET_WIDTHS = (1, 2, 16, 32)
BUCKET_STEP = 16
#: Inference requests are split over threads in pieces of at least this many rows.
PARALLEL_ROWS = 64
#: Inference batches of at most this many samples take the one-bucket padded path
#: (:meth:`LeaderStudent.logits_padded`): fewer operations, more padding (measured on the
#: default cohort: faster up to 4 samples, about equal at 8, slower from 16 on).
SMALL_BATCH = 4


@dataclass(frozen=True)
class StudentModelConfig:
    """``params:distill.model``: the network's sizes (conf/base/parameters_distill.yml)."""

    hidden_size: int = 64
    n_heads: int = 4
    intermediate_size: int = 300
    hidden_dropout: float = 0.4
    attention_dropout: float = 0.1
    max_visits: int = 10
    max_codes: int = 100
    visit_positions: bool = True


#: The saved model config's switchable keys and their defaults (sizes come from the vocab).
DEFAULT_CONFIG: dict = {
    **asdict(StudentModelConfig()),
    "profile_enabled": True,
    "kd_enabled": True,
    "align_enabled": True,
    "teacher_hidden_size": None,
}


def make_config(vocab: dict, overrides: dict | None = None) -> dict:
    """Complete model config: defaults, overrides, and the sizes read off ``vocab``."""
    cfg = dict(DEFAULT_CONFIG)
    unknown = set(overrides or {}) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(
            f"unknown student model parameter(s) {sorted(unknown)}; expected some of {sorted(DEFAULT_CONFIG)}"
        )
    cfg.update(overrides or {})
    for key in ("tokens", "medication", "profile", "age_bins"):
        if key not in vocab:
            raise ValueError(f"vocab has no '{key}' entry (docs/contracts.md: vocab json)")
    if cfg["hidden_size"] % cfg["n_heads"]:
        raise ValueError(
            f"student hidden_size={cfg['hidden_size']} must be divisible by n_heads={cfg['n_heads']}"
        )
    cfg["n_tokens"] = len(vocab["tokens"])
    cfg["n_medications"] = len(vocab["medication"])
    cfg["profile_fields"] = list(vocab["profile"])
    cfg["profile_sizes"] = [len(vocab["profile"][f]) for f in cfg["profile_fields"]]
    cfg["n_age_bins"] = (
        len(vocab["age_bins"]) + 2
    )  # unknown, below the first edge, ..., above the last
    if not cfg["profile_enabled"] and cfg["align_enabled"]:
        raise ValueError(
            "align_enabled needs profile_enabled: the alignment pulls the profile prompt towards the "
            "target medication set (set distill.align.enabled: false when the profile is off)"
        )
    if cfg["kd_enabled"] and not cfg["teacher_hidden_size"]:
        raise ValueError("kd_enabled needs teacher_hidden_size (the teacher feature width)")
    return cfg


# --------------------------------------------------------------------------------------------
# Samples -> packed code sets
# --------------------------------------------------------------------------------------------
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class PackedSets:
    """Non-empty code sets stored flat, grouped by sample in sample order (empty sets are absent:
    their encoding is the zero vector, as the mean over no code was in the padded model)."""

    tokens: np.ndarray  # [T] token ids, set after set
    lengths: np.ndarray  # [S] codes per set (>= 1)
    slot: np.ndarray  # [S] slot of the set in its sample's visit window (0 for targets)
    starts: np.ndarray  # [S] offset of each set in ``tokens``
    sample_first: np.ndarray  # [N] first set of each sample
    sample_count: np.ndarray  # [N] number of sets of each sample

    @classmethod
    def build(cls, tokens, lengths, slots, counts) -> PackedSets:
        lens = np.asarray(lengths, dtype=np.int64)
        cnt = np.asarray(counts, dtype=np.int64)
        return cls(
            tokens=np.asarray(tokens, dtype=np.int64),
            lengths=lens,
            slot=np.asarray(slots, dtype=np.int64),
            starts=np.cumsum(lens) - lens,
            sample_first=np.cumsum(cnt) - cnt,
            sample_count=cnt,
        )


@dataclass
class EncodedSamples:
    """A split encoded once: per-sample windows, packed code sets, profile ids, targets."""

    sample_ids: list[str]
    n_visits: np.ndarray  # [N] visits in the window (current visit last)
    sets: dict[
        str, PackedSets
    ]  # diagnoses / procedures / medications (slot t = visit t-1) / targets
    profile: np.ndarray  # [N, n_fields + 1] (last column: age bin)
    targets: np.ndarray  # [N, M] float32 multi-hot
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def codes(self, kind: str, i: int) -> list[list[int]]:
        """Token ids of sample ``i`` per window slot (``kind`` in STREAMS), empty slots included;
        ``kind="targets"`` gives ``[target M_ token ids]``."""
        ps = self.sets[kind]
        n_slots = 1 if kind == "targets" else int(self.n_visits[i])
        out: list[list[int]] = [[] for _ in range(n_slots)]
        first, count = int(ps.sample_first[i]), int(ps.sample_count[i])
        for s in range(first, first + count):
            start, length = int(ps.starts[s]), int(ps.lengths[s])
            out[int(ps.slot[s])] = ps.tokens[start : start + length].tolist()
        return out


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class SampleEncoder:
    """Maps visits to token ids with the vocabulary's lookup tables, built once per model.

    The per-sample work is a Python loop over visits only; the codes themselves are looked up,
    counted, cut and packed with vectorised pandas/numpy operations.
    """

    KINDS = {"diagnoses": "diagnosis", "procedures": "procedure", "medications": "medication"}

    def __init__(self, vocab: dict, max_visits: int = 10, max_codes: int = 100):
        if max_visits < 1 or max_codes < 1:
            raise ValueError(f"max_visits ({max_visits}) and max_codes ({max_codes}) must be >= 1")
        self.max_visits, self.max_codes = int(max_visits), int(max_codes)
        codes: dict[str, list[str]] = {"D_": [], "P_": [], "M_": []}
        ids: dict[str, list[int]] = {"D_": [], "P_": [], "M_": []}
        for i, t in enumerate(vocab["tokens"]):
            if t[:2] in codes:
                codes[t[:2]].append(t[2:])
                ids[t[:2]].append(i)
        self.lookup = {
            kind: dict(zip(codes[prefix], ids[prefix], strict=True))
            for kind, prefix in (("diagnosis", "D_"), ("procedure", "P_"), ("medication", "M_"))
        }
        meds = list(vocab["medication"])
        self.n_medications = len(meds)
        self.med_index = {m: j for j, m in enumerate(meds)}
        # the M_ token of each medication column (-1: a medication without a token)
        self.med_token = np.asarray(
            [self.lookup["medication"].get(m, -1) for m in meds], dtype=np.int64
        )
        self.fields = list(vocab["profile"])
        self.field_index = [{v: j for j, v in enumerate(vocab["profile"][f])} for f in self.fields]
        self.age_edges = np.asarray(vocab["age_bins"], dtype=float)

    def encode_frame(self, samples: pd.DataFrame, with_targets: bool = True) -> EncodedSamples:
        """Encode a samples table (docs/contracts.md); see :func:`encode_samples`."""
        required = ["sample_id", "diagnoses", "procedures", "medications"]
        if with_targets:
            required.append("target")
        missing = [c for c in required if c not in samples.columns]
        if missing:
            raise ValueError(
                f"samples table lacks column(s) {missing}; expected the sample contract of docs/contracts.md"
            )
        n = len(samples)
        profile = {
            f: (samples[f].tolist() if f in samples.columns else [None] * n) for f in self.fields
        }
        return self.encode(
            [str(s) for s in samples["sample_id"]],
            samples["diagnoses"].tolist(),
            samples["procedures"].tolist(),
            samples["medications"].tolist(),
            profile,
            samples["age"].tolist() if "age" in samples.columns else [None] * n,
            samples["target"].tolist() if with_targets else None,
        )

    @staticmethod
    def _get(table: dict, flat: list) -> np.ndarray:
        """``table[code]`` for every code of ``flat`` (-1: unknown; a non-string code, e.g. an
        int, is matched by its string): one C-level ``map`` over the codes."""
        if not flat:
            return _EMPTY
        out = np.fromiter(map(table.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        for j in np.flatnonzero(out < 0):
            if not isinstance(flat[j], str):
                out[j] = table.get(str(flat[j]), -1)
        return out

    #: Up to this many sets a plain Python loop beats the vectorised path (a single request).
    FEW_SETS = 16

    def _pack(self, kind: str, sets: list, owner: list, slots: list, n: int, report: dict | None):
        """Look up, cut to ``max_codes`` and pack a list of code sets -> :class:`PackedSets`."""
        if len(sets) <= self.FEW_SETS:
            return self._pack_few(kind, sets, owner, slots, n, report)
        lengths = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
        flat = list(chain.from_iterable(sets))
        ids = self._get(self.lookup[kind], flat)
        known = ids >= 0
        seg = np.repeat(np.arange(len(sets)), lengths)
        n_known = np.bincount(seg[known], minlength=len(sets)).astype(np.int64)
        # rank of each known code among the known codes of its set
        rank = np.cumsum(known) - 1 - np.repeat(np.cumsum(n_known) - n_known, lengths)
        keep = known & (rank < self.max_codes)
        if report is not None:
            report["unknown_codes_dropped"][kind] += int((~known).sum())
            over = n_known > self.max_codes
            report["visits_codes_truncated"] += int(over.sum())
            report["codes_truncated"] += int((n_known[over] - self.max_codes).sum())
        kept = np.minimum(n_known, self.max_codes)
        nonempty = kept > 0
        owner_arr = np.asarray(owner, dtype=np.int64)
        return PackedSets.build(
            ids[keep],
            kept[nonempty],
            np.asarray(slots, dtype=np.int64)[nonempty],
            np.bincount(owner_arr[nonempty], minlength=n),
        )

    def _pack_few(self, kind, sets, owner, slots, n, report) -> PackedSets:
        """:meth:`_pack` for a handful of sets, in plain Python (the same result)."""
        table, cap = self.lookup[kind], self.max_codes
        tokens: list[int] = []
        lengths: list[int] = []
        kept_slots: list[int] = []
        counts = [0] * n
        for codes, r, slot in zip(sets, owner, slots, strict=True):
            ids = []
            for c in codes:
                i = table.get(c, -1)
                if i < 0 and not isinstance(c, str):
                    i = table.get(str(c), -1)
                if i < 0:
                    if report is not None:
                        report["unknown_codes_dropped"][kind] += 1
                else:
                    ids.append(i)
            if len(ids) > cap:
                if report is not None:
                    report["visits_codes_truncated"] += 1
                    report["codes_truncated"] += len(ids) - cap
                ids = ids[:cap]
            if ids:
                tokens.extend(ids)
                lengths.append(len(ids))
                kept_slots.append(slot)
                counts[r] += 1
        return PackedSets.build(tokens, lengths, kept_slots, counts)

    def encode(
        self,
        sample_ids: list[str],
        diagnoses: list,
        procedures: list,
        medications: list,
        profile: dict[str, list],
        ages: list,
        targets: list | None = None,
        where: str = "sample",
    ) -> EncodedSamples:
        """The core: parallel per-sample lists (visits of code lists, current visit last;
        medications of the past visits only). Unknown codes are dropped and counted; codes beyond
        ``max_codes`` in one visit are cut and counted; nothing raises for long histories."""
        n = len(sample_ids)
        max_visits = self.max_visits
        report: dict[str, Any] = {
            "samples": n,
            "samples_visits_truncated": 0,
            "visits_dropped_by_window": 0,
            "visits_codes_truncated": 0,
            "codes_truncated": 0,
            "unknown_codes_dropped": {"diagnosis": 0, "procedure": 0, "medication": 0},
            "unknown_targets_dropped": 0,
            "unknown_profile_values": 0,
        }
        sets: dict[str, tuple[list, list, list]] = {k: ([], [], []) for k in STREAMS}
        dx_sets, dx_owner, dx_slot = sets["diagnoses"]
        px_sets, px_owner, px_slot = sets["procedures"]
        rx_sets, rx_owner, rx_slot = sets["medications"]
        n_visits = np.zeros(n, dtype=np.int64)
        for r in range(n):
            dx, px, rx = diagnoses[r], procedures[r], medications[r]
            rx = [] if _is_missing(rx) else rx
            n_vis = len(dx) if not _is_missing(dx) else 0
            if n_vis == 0 or _is_missing(px) or len(px) != n_vis or len(rx) != n_vis - 1:
                raise ValueError(
                    f"{where} {sample_ids[r]}: expected len(diagnoses) == len(procedures) == "
                    f"len(medications) + 1 >= 1 (current visit last), got {n_vis}, "
                    f"{0 if _is_missing(px) else len(px)}, {len(rx)}"
                )
            start = max(0, n_vis - max_visits)
            if start:
                report["samples_visits_truncated"] += 1
                report["visits_dropped_by_window"] += start
            window = n_vis - start
            n_visits[r] = window
            slots = range(window)
            dx_sets.extend(dx[start:n_vis])
            px_sets.extend(px[start:n_vis])
            dx_owner.extend([r] * window)
            px_owner.extend([r] * window)
            dx_slot.extend(slots)
            px_slot.extend(slots)
            # slot 0 of the window is the profile; slot t holds the medications of visit t-1
            rx_sets.extend(rx[start : n_vis - 1])
            rx_owner.extend([r] * (window - 1))
            rx_slot.extend(range(1, window))
        packed = {key: self._pack(self.KINDS[key], *sets[key], n, report) for key in STREAMS}

        y = np.zeros((n, self.n_medications), dtype=np.float32)
        if targets is not None:
            lists = [[] if _is_missing(t) else t for t in targets]
            lengths = np.fromiter(map(len, lists), dtype=np.int64, count=n)
            flat = list(chain.from_iterable(lists))
            col = self._get(self.med_index, flat)
            token = np.where(col >= 0, self.med_token[np.maximum(col, 0)], -1)
            known = token >= 0
            report["unknown_targets_dropped"] = int((~known).sum())
            row = np.repeat(np.arange(n), lengths)
            y[row[known], col[known]] = 1.0
            n_known = np.bincount(row[known], minlength=n).astype(np.int64)
            rank = np.cumsum(known) - 1 - np.repeat(np.cumsum(n_known) - n_known, lengths)
            keep = known & (rank < self.max_codes)
            kept = np.minimum(n_known, self.max_codes)
            nonempty = kept > 0
            packed["targets"] = PackedSets.build(
                token[keep], kept[nonempty], np.zeros(int(nonempty.sum()), np.int64), nonempty
            )
        else:
            packed["targets"] = PackedSets.build(_EMPTY, _EMPTY, _EMPTY, np.zeros(n, np.int64))

        prof = np.zeros((n, len(self.fields) + 1), dtype=np.int64)
        for j, f in enumerate(self.fields):
            values = profile.get(f)
            if values is None:
                values = [None] * n
            # None (no value) is "unknown"; a value outside the vocabulary (NaN included) is
            # counted and mapped to index 0, as the padded implementation did
            index = self.field_index[j]
            idx = np.fromiter(
                (index.get("unknown" if v is None else v, -1) for v in values),
                dtype=np.int64,
                count=n,
            )
            report["unknown_profile_values"] += int((idx < 0).sum())
            prof[:, j] = np.maximum(idx, 0)
        age = np.asarray([np.nan if v is None else v for v in ages], dtype=float)
        bins = np.searchsorted(self.age_edges, age, side="right") + 1
        prof[:, -1] = np.where(np.isnan(age), 0, bins)
        return EncodedSamples(
            sample_ids=list(sample_ids),
            n_visits=n_visits,
            sets=packed,
            profile=prof,
            targets=y,
            report=report,
        )


def encode_samples(
    samples: pd.DataFrame,
    vocab: dict,
    max_visits: int = 10,
    max_codes: int = 100,
    with_targets: bool = True,
) -> EncodedSamples:
    """Map sample rows to packed token ids, keeping the last ``max_visits`` visits (current visit
    last). Unknown codes are dropped and counted; codes beyond ``max_codes`` in one visit are cut
    and counted (in ``report``); nothing raises for long histories or large visits."""
    return SampleEncoder(vocab, max_visits, max_codes).encode_frame(samples, with_targets)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c)."""
    total = int(counts.sum())
    if total == 0:
        return _EMPTY
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


def _bucket_width(lengths: np.ndarray) -> np.ndarray:
    widths = -(-lengths // BUCKET_STEP) * BUCKET_STEP
    for w in reversed(BUCKET_WIDTHS):
        widths[lengths <= w] = w
    return widths


def _single_code_layout(n_sets: int, prefix: str, tokens: np.ndarray | None, distinct: bool):
    """:func:`set_layout` of ``n_sets`` one-code sets: one bucket of width 1, nothing padded."""
    index = torch.arange(n_sets)
    out = {
        f"{prefix}_pos": index,
        f"{prefix}_valid": torch.ones(n_sets, dtype=torch.bool),
        f"{prefix}_groups": torch.tensor([[0, n_sets, 1]] if n_sets else [], dtype=torch.long).view(
            -1, 3
        ),
        f"{prefix}_seg": index,
        f"{prefix}_inv": torch.ones((n_sets, 1)),
        f"{prefix}_bias": torch.zeros(n_sets),
    }
    if tokens is not None:
        tokens = np.asarray(tokens, dtype=np.int64)
        out[f"{prefix}_padded"] = torch.from_numpy(tokens)
        if not distinct:
            return out
        uniq, inverse = np.unique(tokens, return_inverse=True)
        out[f"{prefix}_uniq"] = torch.from_numpy(uniq)
        out[f"{prefix}_padded_uniq"] = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
    return out


def set_layout(
    lengths: np.ndarray, prefix: str, tokens: np.ndarray | None = None, distinct: bool = True
) -> dict[str, torch.Tensor]:
    """How the packed codes of sets with ``lengths`` (>= 1) map onto padded attention buckets.

    ``{prefix}_pos`` [T]: row of each code in the padded buffer; ``{prefix}_valid`` [R]: which rows
    are real (``{prefix}_bias`` [R]: 0 there, -inf elsewhere, the attention's additive mask);
    ``{prefix}_groups`` [G, 3]: (first row, sets, width) of each bucket;
    ``{prefix}_seg`` [T]: set of each code; ``{prefix}_inv`` [S, 1]: 1 / set length; with
    ``tokens`` [T], ``{prefix}_padded`` [R]: the token of each padded row (pad rows: token 0,
    any finite values do: they are masked keys and discarded queries), and with ``distinct``
    ``{prefix}_uniq`` / ``{prefix}_padded_uniq``: the batch's distinct codes and each padded row's
    position among them (what a forward pass with autograd uses; inference reads per-code tables).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n_sets = len(lengths)
    total = int(lengths.sum())
    if total == n_sets:  # no set or only one-code sets (first visits, single procedures)
        return _single_code_layout(n_sets, prefix, tokens, distinct)
    width = _bucket_width(lengths)
    order = np.argsort(width, kind="stable")
    w_sorted = width[order]
    uniq, first, counts = np.unique(w_sorted, return_index=True, return_counts=True)
    rows = uniq * counts
    group_row = np.cumsum(rows) - rows
    set_row = np.empty(n_sets, dtype=np.int64)
    set_row[order] = (
        np.repeat(group_row, counts) + (np.arange(n_sets) - np.repeat(first, counts)) * w_sorted
    )
    seg = np.repeat(np.arange(n_sets), lengths)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = set_row[seg] + within
    n_rows = int(rows.sum())
    valid = np.zeros(n_rows, dtype=bool)
    valid[pos] = True
    out = {
        f"{prefix}_pos": torch.from_numpy(pos),
        f"{prefix}_valid": torch.from_numpy(valid),
        f"{prefix}_groups": torch.from_numpy(
            np.stack([group_row, counts, uniq], 1).astype(np.int64)
        ),
        f"{prefix}_seg": torch.from_numpy(seg),
        f"{prefix}_inv": torch.from_numpy(
            (1.0 / np.maximum(lengths, 1)).astype(np.float32)[:, None]
        ),
        f"{prefix}_bias": torch.from_numpy(np.where(valid, 0.0, -np.inf).astype(np.float32)),
    }
    if tokens is not None:
        padded = np.zeros(n_rows, dtype=np.int64)
        padded[pos] = tokens
        out[f"{prefix}_padded"] = torch.from_numpy(padded)
        if not distinct:
            return out
        # the distinct codes of the batch, and each padded row's position among them (training
        # projects each distinct code once, then gathers)
        uniq, inverse = np.unique(tokens, return_inverse=True)
        local = np.zeros(n_rows, dtype=np.int64)
        local[pos] = inverse
        out[f"{prefix}_uniq"] = torch.from_numpy(uniq)
        out[f"{prefix}_padded_uniq"] = torch.from_numpy(local)
    return out


def visit_positions(n_vis: np.ndarray, visit_start: np.ndarray) -> np.ndarray:
    """Each visit's distance to its sample's current (last) visit, visits packed sample after
    sample (``visit_start``: each sample's first row)."""
    return np.repeat(n_vis - 1 + visit_start, n_vis) - np.arange(int(n_vis.sum()))


def collate(
    enc: EncodedSamples,
    index,
    teacher_hidden: torch.Tensor | None = None,
    target_sets: bool = True,
    for_training: bool = True,
) -> dict[str, torch.Tensor]:
    """One batch (a dict of tensors) of the samples ``index`` of ``enc``, in that order.

    Per stream ``p`` in dx / px / rx: ``{p}_tokens`` [T] packed token ids, the bucket layout of
    :func:`set_layout`, and ``{p}_dest`` [S]: the visit row of each set. Visits of the batch are
    packed too (``vis_*`` layout over 3 x B sets: the diagnosis, procedure and medication streams),
    ``vis_position`` [NV] is each visit's distance to the current one and ``first_visit`` [B] the
    row of each sample's slot 0 (its profile prompt). ``profile`` [B, F+1], ``targets`` [B, M],
    ``teacher_hidden`` [B, H] float32 when given. With ``target_sets`` the target medication sets
    (alignment) are appended to the rx sets and ``tg_dest`` [S_t] names their sample. Without
    ``for_training`` the batch lacks the distinct-code tables only a pass with autograd reads (an
    inference batch: cheaper to cut).
    """
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    b = len(idx)
    n_vis = enc.n_visits[idx]
    visit_start = np.cumsum(n_vis) - n_vis  # row of each sample's slot 0 among the batch's visits
    batch: dict[str, torch.Tensor] = {}
    for kind in (*STREAMS, "targets"):
        if kind == "targets" and not target_sets:
            continue
        ps = enc.sets[kind]
        counts = ps.sample_count[idx]
        sets = _ranges(ps.sample_first[idx], counts)
        owner = np.repeat(np.arange(b), counts)
        if kind == "targets":
            batch["tg_dest"] = torch.from_numpy(owner)
        else:
            batch[f"{PREFIX[kind]}_dest"] = torch.from_numpy(visit_start[owner] + ps.slot[sets])
        if kind == "medications" and target_sets:
            tg = enc.sets["targets"]
            tg_sets = _ranges(tg.sample_first[idx], tg.sample_count[idx])
            lengths = np.concatenate([ps.lengths[sets], tg.lengths[tg_sets]])
            tokens = np.concatenate(
                [
                    ps.tokens[_ranges(ps.starts[sets], ps.lengths[sets])],
                    tg.tokens[_ranges(tg.starts[tg_sets], tg.lengths[tg_sets])],
                ]
            )
        elif kind == "targets":
            continue
        else:
            lengths = ps.lengths[sets]
            tokens = ps.tokens[_ranges(ps.starts[sets], lengths)]
        prefix = PREFIX[kind]
        batch[f"{prefix}_tokens"] = torch.from_numpy(tokens)
        batch.update(set_layout(lengths, prefix, tokens, for_training))
    batch.update(set_layout(np.tile(n_vis, 3), "vis"))
    batch["vis_position"] = torch.from_numpy(visit_positions(n_vis, visit_start))
    batch["first_visit"] = torch.from_numpy(visit_start)
    batch["profile"] = torch.from_numpy(enc.profile[idx])
    batch["targets"] = torch.from_numpy(enc.targets[idx])
    if teacher_hidden is not None:
        batch["teacher_hidden"] = teacher_hidden[torch.from_numpy(idx)].float()
    return batch


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def padded_sets(ps: PackedSets, idx: np.ndarray, visit_start: np.ndarray) -> dict:
    """The sets of samples ``idx`` in ONE padded bucket (width: the longest set), for the
    small-request path (:meth:`LeaderStudent.logits_padded`): ``tokens`` [S, W] (pad: token 0),
    ``mask`` [S, 1, 1, W] the real codes (None when no set is padded), ``weights`` [S, 1, W]
    1 / length on the real codes (a set's mean is one matrix product) and ``dest`` [S] the visit
    row of each set."""
    if len(idx) == 1:  # one sample: its sets, and their codes, are contiguous
        first = int(ps.sample_first[idx[0]])
        rows: slice | np.ndarray = slice(first, first + int(ps.sample_count[idx[0]]))
        lengths = ps.lengths[rows]
        start = int(ps.starts[first]) if len(lengths) else 0
        codes = ps.tokens[start : start + int(lengths.sum())]
        dest = ps.slot[rows] + visit_start[0]
    else:
        counts = ps.sample_count[idx]
        rows = _ranges(ps.sample_first[idx], counts)
        lengths = ps.lengths[rows]
        codes = ps.tokens[_ranges(ps.starts[rows], lengths)]
        dest = np.repeat(visit_start, counts) + ps.slot[rows]
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    inv = (1.0 / np.maximum(lengths, 1)).astype(np.float32)[:, None]
    mask = None
    if n and int(lengths.min()) == width:  # nothing padded
        tokens = codes.reshape(n, width)
        weights = np.repeat(inv, width, axis=1)
    else:
        valid = np.arange(width) < lengths[:, None]
        tokens = np.zeros((n, width), dtype=np.int64)
        tokens[valid] = codes
        mask = torch.from_numpy(valid).view(n, 1, 1, width)
        weights = valid * inv
    return {
        "tokens": torch.from_numpy(tokens),
        "mask": mask,
        "weights": torch.from_numpy(weights).unsqueeze(1),
        "dest": torch.from_numpy(dest),
    }


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with a uniform mask: the distribution of ``F.dropout``, whose Bernoulli
    kernel is 3-4x slower on CPU; drawn from torch's global generator (seeded by the training)."""
    if not training or p <= 0.0:
        return x
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class LayerNorm(nn.Module):
    """TF-style layer norm (epsilon inside the square root), as bert_models.py; this is exactly
    the formula of ``F.layer_norm`` (biased variance, eps inside the root), which runs fused."""

    def __init__(self, d: int, eps: float = 1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def segment_mean(x: torch.Tensor, seg: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``x`` [T, D] per segment ``seg`` [T]; ``inv`` [S, 1] = 1 / count."""
    if inv.shape[0] == x.shape[0]:  # one row per segment (segments are never empty)
        return x
    return x.new_zeros((inv.shape[0], x.shape[1])).index_add_(0, seg, x) * inv


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Drop(MHA(LN x)); x + Drop(FFN(LN x)); Drop. QKV without bias, GELU(tanh).

    Runs on packed sets and returns the mean of its output over each set, which is all the student
    uses: ``x`` [T, d] are the codes (or visits) of all sets, the layout (see :func:`set_layout`)
    says which set each row belongs to. In eval mode the second projection of the feed-forward is
    applied to the set means instead of every row (it is affine, so the result is the same).
    """

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.h, self.dk = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d)
        self.ln1, self.ln2 = LayerNorm(d), LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(attn_dropout)

    def attend(self, padded: torch.Tensor, layout: tuple) -> torch.Tensor:
        """Multi-head attention of every code over the real codes of its own set.

        ``padded`` [R, 3d]: q, k, v of the rows of the padded buckets -> [T, d] context per code.
        """
        pos, valid, groups = layout[0], layout[1], layout[2]
        d = padded.shape[1] // 3
        p_attn = self.attn_drop.p if self.training else 0.0
        parts = []
        for row, n, w in groups.tolist():
            rows = padded[row : row + n * w]
            if w == 1:  # one code: softmax over one key is 1, the context is its value
                v = rows[:, 2 * d :]
                if p_attn:  # the dropped attention weight: one draw per set and head
                    keep = dropout(v.new_ones((n, self.h, 1)), p_attn, True)
                    v = (v.view(n, self.h, self.dk) * keep).view(n, d)
                parts.append(v)
                continue
            q, k, v = rows.view(n, w, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
            if p_attn:  # the fused kernel would fall back to its slow path to drop weights
                nh = n * self.h
                bias = layout[5][row : row + n * w].view(n, 1, 1, w).expand(n, self.h, 1, w)
                scores = torch.baddbmm(
                    bias.reshape(nh, 1, w),
                    q.reshape(nh, w, self.dk),
                    k.reshape(nh, w, self.dk).transpose(1, 2),
                    alpha=self.dk**-0.5,
                )
                attn = dropout(torch.softmax(scores, dim=-1), p_attn, True)
                ctx = torch.bmm(attn, v.reshape(nh, w, self.dk)).view(n, self.h, w, self.dk)
            else:
                mask = valid[row : row + n * w].view(n, 1, 1, w)
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            parts.append(ctx.transpose(1, 2).reshape(n * w, d))
        if len(parts) == 1 and groups.shape[0] == 1 and padded.shape[0] == pos.shape[0]:
            return parts[0]  # one bucket, nothing padded: the rows are in code order already
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).index_select(0, pos)

    def forward(
        self, x: torch.Tensor, layout: tuple, padded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [T, d] packed rows; layout (pos, valid, groups, seg, inv, bias) -> [S, d] set means.
        ``padded`` [R, 3d]: q, k, v of the padded rows when the caller has them already."""
        pos, valid, seg, inv = layout[0], layout[1], layout[3], layout[4]
        p, training = self.drop.p, self.training
        if padded is None:
            qkv = F.linear(self.ln1(x), self.qkv.weight)
            padded = qkv.new_zeros((valid.shape[0], qkv.shape[1])).index_copy(0, pos, qkv)
        ctx = self.attend(padded, layout)
        x = x + dropout(F.linear(ctx, self.out.weight, self.out.bias), p, training)
        g = F.gelu(F.linear(self.ln2(x), self.ff1.weight, self.ff1.bias), approximate="tanh")
        if not training:
            return segment_mean(x, seg, inv) + F.linear(
                segment_mean(g, seg, inv), self.ff2.weight, self.ff2.bias
            )
        g = dropout(g, p, True)
        x = x + dropout(F.linear(g, self.ff2.weight, self.ff2.bias), p, True)
        return segment_mean(dropout(x, p, True), seg, inv)

    def infer(self, residual: torch.Tensor, padded: torch.Tensor, layout: tuple) -> torch.Tensor:
        """The eval-mode block without autograd, from precomputed inputs: ``residual`` [T, d] =
        x + the output projection's bias, ``padded`` [R, 3d] = q, k, v of the padded rows."""
        seg, inv = layout[3], layout[4]
        ctx = self.attend(padded, layout)
        x = torch.addmm(residual, ctx, self.out.weight.t())
        g = kernels.linear_gelu(self.ln2(x), self.ff1.weight, self.ff1.bias)
        return segment_mean(x, seg, inv) + F.linear(
            segment_mean(g, seg, inv), self.ff2.weight, self.ff2.bias
        )

    def infer_rows(self, x: torch.Tensor, layout: tuple) -> torch.Tensor:
        """:meth:`infer` from the rows themselves (the visit transformer's continuous inputs)."""
        pos, valid = layout[0], layout[1]
        qkv = F.linear(self.ln1(x), self.qkv.weight)
        padded = qkv.new_zeros((valid.shape[0], qkv.shape[1])).index_copy(0, pos, qkv)
        return self.infer(x + self.out.bias, padded, layout)

    def infer_padded(
        self,
        residual: torch.Tensor,
        qkv: torch.Tensor,
        mask: torch.Tensor | None,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`infer` on sets padded to one width W: ``residual`` [S, W, d] (x + the output
        projection's bias), ``qkv`` [S, W, 3d], ``mask`` [S, 1, 1, W] the real rows (None: all
        are), ``weights`` [S, 1, W] 1 / length on them -> [S, d] set means. Pad rows are computed
        and weighted 0."""
        n, w, d = residual.shape
        q, k, v = qkv.view(n, w, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        x = torch.addmm(residual.view(n * w, d), ctx.reshape(n * w, d), self.out.weight.t())
        g = kernels.linear_gelu(self.ln2(x), self.ff1.weight, self.ff1.bias)
        x_mean = torch.bmm(weights, x.view(n, w, d)).view(n, d)
        g_mean = torch.bmm(weights, g.view(n, w, -1)).view(n, -1)
        return torch.addmm(x_mean.add_(self.ff2.bias), g_mean, self.ff2.weight.t())


def _layout(batch: dict, prefix: str) -> tuple:
    return tuple(batch[f"{prefix}_{k}"] for k in ("pos", "valid", "groups", "seg", "inv", "bias"))


class LeaderStudent(nn.Module):
    """The LEADER(S) network; see the module docstring. Build it from :func:`make_config`."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        d = config["hidden_size"]

        def block():
            return TransformerBlock(
                d,
                config["n_heads"],
                config["intermediate_size"],
                config["hidden_dropout"],
                config["attention_dropout"],
            )

        self.embedding = nn.Embedding(config["n_tokens"], d)
        self.diag_trm, self.proc_trm, self.med_trm = block(), block(), block()
        self.visit_trm = block()
        if config["profile_enabled"]:
            self.profile_embeddings = nn.ModuleList(
                [nn.Embedding(n, d) for n in config["profile_sizes"]]
                + [nn.Embedding(config["n_age_bins"], d)]
            )
            self.profile_proj = nn.Linear(d * (len(config["profile_sizes"]) + 1), d)
            sizes = [*config["profile_sizes"], config["n_age_bins"]]
            offsets = torch.as_tensor(np.cumsum([0, *sizes[:-1]]), dtype=torch.long)
            self.register_buffer("profile_offsets", offsets, persistent=False)
        else:  # PaddingEncoder: one learned vector in the first medication slot
            self.profile_pad = nn.Parameter(torch.randn(d) * 0.02)
        self.visit_position = (
            nn.Embedding(config["max_visits"], d) if config["visit_positions"] else None
        )
        self.head1 = nn.Linear(3 * d, 2 * d)
        self.head2 = nn.Linear(2 * d, config["n_medications"])
        self.projector = (
            nn.Linear(2 * d, int(config["teacher_hidden_size"])) if config["kd_enabled"] else None
        )
        if config["align_enabled"]:
            self.x_projector, self.y_projector = nn.Linear(d, d), nn.Linear(d, d)

    def _tables(self) -> dict[str, torch.Tensor]:
        """Inference tables derived from the weights alone: each set transformer's per-code q/k/v
        rows (first layer norm and projection of the code embedding) and residual rows (embedding
        plus the output projection's bias), and the profile fields' rows already multiplied by
        their slice of the profile projection. Made once, reused until a weight they come from
        changes version or storage (an optimiser step); ``train()``/``eval()``,
        ``load_state_dict`` and ``.to()``-like conversions drop them."""
        cache = self._cache
        sources = cache.get("sources")
        if sources is None:
            sources = cache["sources"] = self._table_sources()
        stamp = [(p.data_ptr(), p._version) for p in sources]
        if cache.get("stamp") != stamp:
            with torch.no_grad():
                cache["tables"] = self._make_tables()
            cache["stamp"] = stamp
        return cache["tables"]

    def _table_sources(self) -> tuple[torch.Tensor, ...]:
        sources: list[torch.Tensor] = [self.embedding.weight]
        for trm in (self.diag_trm, self.proc_trm, self.med_trm):
            sources += [trm.ln1.weight, trm.ln1.bias, trm.qkv.weight, trm.out.bias]
        if self.config["profile_enabled"]:
            sources += [cast(nn.Embedding, e).weight for e in self.profile_embeddings]
            sources += [self.profile_proj.weight]
        return tuple(sources)

    def _make_tables(self) -> dict[str, torch.Tensor]:
        emb = self.embedding.weight
        tables = {}
        for prefix, trm in (("dx", self.diag_trm), ("px", self.proc_trm), ("rx", self.med_trm)):
            tables[f"{prefix}_qkv"] = F.linear(trm.ln1(emb), trm.qkv.weight)
            tables[f"{prefix}_residual"] = emb + trm.out.bias
        if self.config["profile_enabled"]:
            # profile_proj(concat_j e_j) = sum_j e_j W_j^T + b: one row per field value
            d = emb.shape[1]
            tables["profile"] = torch.cat(
                [
                    F.linear(
                        cast(nn.Embedding, e).weight,
                        self.profile_proj.weight[:, j * d : (j + 1) * d],
                    )
                    for j, e in enumerate(self.profile_embeddings)
                ]
            )
        return tables

    def train(self, mode: bool = True):
        self.__dict__["_derived"] = {}  # tables derived from the weights are made afresh
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self.__dict__["_derived"] = {}  # with assign=True the parameters are new tensors
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self.__dict__["_derived"] = {}  # .to(), .float(), ...: the tables follow the weights
        return super()._apply(*args, **kwargs)

    @property
    def _cache(self) -> dict:
        cache = self.__dict__.get("_derived")
        if cache is None:
            cache = self.__dict__["_derived"] = {}
        return cache

    def profile_prompt(self, profile: torch.Tensor, tables: dict | None = None) -> torch.Tensor:
        """[B, F+1] ids -> [B, d] profile prompt p (or the learned padding vector); ``tables``:
        :meth:`_tables`, when the caller has them already (inference)."""
        if not self.config["profile_enabled"]:
            return self.profile_pad.expand(profile.shape[0], -1)
        ids = profile + cast(torch.Tensor, self.profile_offsets)
        if not torch.is_grad_enabled():  # the fields' rows, projected once per weights
            rows = F.embedding(ids, (tables or self._tables())["profile"])
            return torch.add(rows.sum(1), self.profile_proj.bias)
        # one lookup in the stacked tables == concatenating the per-field embeddings
        table = torch.cat([cast(nn.Embedding, emb).weight for emb in self.profile_embeddings])
        return self.profile_proj(F.embedding(ids, table).reshape(profile.shape[0], -1))

    def _sets(self, batch: dict, prefix: str, trm: TransformerBlock) -> torch.Tensor:
        """[S, d] encodings of the packed sets ``prefix`` (none: an empty tensor)."""
        tokens = batch[f"{prefix}_tokens"]
        if tokens.shape[0] == 0:
            return self.embedding.weight.new_zeros((0, self.embedding.embedding_dim))
        layout = _layout(batch, prefix)
        if self.training or torch.is_grad_enabled():
            # the first layer norm and q/k/v projection depend on the code only: each distinct
            # code of the batch is projected once, then gathered into the padded rows
            if f"{prefix}_uniq" in batch:
                uniq = batch[f"{prefix}_uniq"]
                qkv = F.linear(trm.ln1(self.embedding(uniq)), trm.qkv.weight)
                padded = F.embedding(batch[f"{prefix}_padded_uniq"], qkv)
            else:  # an inference batch (no distinct-code tables): project the whole vocabulary
                qkv = F.linear(trm.ln1(self.embedding.weight), trm.qkv.weight)
                padded = F.embedding(batch[f"{prefix}_padded"], qkv)
            return trm(self.embedding(tokens), layout, padded)
        tables = self._tables()
        return trm.infer(
            F.embedding(tokens, tables[f"{prefix}_residual"]),
            F.embedding(batch[f"{prefix}_padded"], tables[f"{prefix}_qkv"]),
            layout,
        )

    def logits_padded(self, enc: EncodedSamples, index) -> torch.Tensor:
        """Logits [B, M] of the samples ``index`` of ``enc``, for inference only (no autograd,
        eval mode), with every set of a stream, and every visit sequence, in ONE padded bucket.

        It needs no :func:`collate` and none of the buckets' bookkeeping (at batch 1: 437 ATen
        operations instead of 570), so it is the faster path for small requests (one patient);
        the padding grows with the batch, so large batches take the buckets. Same numbers within
        float rounding (tests/student/test_equivalence.py)."""
        d = self.embedding.embedding_dim
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        b = len(idx)
        n_vis = enc.n_visits[idx]
        visit_start = np.cumsum(n_vis) - n_vis
        nv = int(n_vis.sum())
        tables = self._tables()
        visits = self.embedding.weight.new_zeros((3, nv, d))  # the three streams' visit rows
        for j, (kind, trm) in enumerate(
            zip(STREAMS, (self.diag_trm, self.proc_trm, self.med_trm), strict=True)
        ):
            sets = padded_sets(enc.sets[kind], idx, visit_start)
            if sets["tokens"].shape[0]:
                prefix = PREFIX[kind]
                encoded = trm.infer_padded(
                    F.embedding(sets["tokens"], tables[f"{prefix}_residual"]),
                    F.embedding(sets["tokens"], tables[f"{prefix}_qkv"]),
                    sets["mask"],
                    sets["weights"],
                )
                visits[j].index_copy_(0, sets["dest"], encoded)
        # slot 0 of the medication stream is the profile prompt (medication sets fill slots >= 1)
        first = torch.from_numpy(visit_start)
        prompt = self.profile_prompt(torch.from_numpy(enc.profile[idx]), tables)
        visits[2].index_copy_(0, first, prompt)
        if self.visit_position is not None:
            position = torch.from_numpy(visit_positions(n_vis, visit_start))
            visits += F.embedding(position, self.visit_position.weight)
        width = int(n_vis.max())
        mask = None
        if int(n_vis.min()) == width:  # every sequence as long as the longest: rows in place
            x = visits.view(3 * b, width, d)
            weights = visits.new_full((3 * b, 1, width), 1.0 / width)
        else:
            valid = np.tile(np.arange(width) < n_vis[:, None], (3, 1))  # [3B, V], stream-major
            rows_of = np.where(valid[:b], visit_start[:, None] + np.arange(width), 0)
            x = visits[:, torch.from_numpy(rows_of)].reshape(3 * b, width, d)
            mask = torch.from_numpy(valid).view(3 * b, 1, 1, width)
            inv = (1.0 / np.tile(n_vis, 3)).astype(np.float32)[:, None]
            weights = torch.from_numpy(valid * inv).unsqueeze(1)
        trm = self.visit_trm
        pooled = trm.infer_padded(
            x + trm.out.bias, F.linear(trm.ln1(x), trm.qkv.weight), mask, weights
        )
        features = F.relu(pooled.view(3, b, d).transpose(0, 1).reshape(b, 3 * d))
        hidden = F.relu(F.linear(features, self.head1.weight, self.head1.bias))
        return F.linear(hidden, self.head2.weight, self.head2.bias)

    def forward(self, batch: dict) -> dict:
        """``logits``, ``hidden`` (the head's input to the last layer), ``profile`` (the prompt),
        ``kd`` (the projected feature, with distillation) and ``target_set`` (the encoded target
        medication sets, when the batch carries them)."""
        return self._forward(batch, extras=True)

    def logits(self, batch: dict) -> torch.Tensor:
        """Only the logits [B, M] (no distillation projection, no target sets)."""
        return self._forward(batch, extras=False)["logits"]

    def _forward(self, batch: dict, extras: bool) -> dict:
        d = self.embedding.embedding_dim
        n_batch = batch["profile"].shape[0]
        nv = batch["vis_position"].shape[0]
        streams = []
        for prefix, trm in (("dx", self.diag_trm), ("px", self.proc_trm)):
            sets = self._sets(batch, prefix, trm)
            if sets.shape[0] == nv:  # a set for every visit: they are in visit order already
                streams.append(sets)
            else:
                streams.append(sets.new_zeros((nv, d)).index_copy(0, batch[f"{prefix}_dest"], sets))
        rx_sets = self._sets(batch, "rx", self.med_trm)  # medication sets, then target sets
        n_med = batch["rx_dest"].shape[0]
        p = self.profile_prompt(batch["profile"])
        # slot 0 of the medication stream is the profile prompt (pseudo med record of visit 0)
        if n_med == 0 and nv == n_batch:  # first visits only: the stream is the profile
            streams.append(p)
        else:
            streams.append(
                p.new_zeros((nv, d)).index_copy(
                    0,
                    torch.cat([batch["rx_dest"], batch["first_visit"]]),
                    torch.cat([rx_sets[:n_med], p]),
                )
            )
        visits = torch.stack(streams)  # [3, NV, d]
        if self.visit_position is not None:
            visits = visits + self.visit_position(batch["vis_position"])
        rows, vis_layout = visits.reshape(3 * nv, d), _layout(batch, "vis")
        if self.training or torch.is_grad_enabled():
            pooled = self.visit_trm(rows, vis_layout)  # [3B, d]
        else:
            pooled = self.visit_trm.infer_rows(rows, vis_layout)
        features = pooled.view(3, n_batch, d).transpose(0, 1).reshape(n_batch, 3 * d)
        hidden = F.relu(self.head1(F.relu(features)))
        out = {"logits": self.head2(hidden), "hidden": hidden, "profile": p}
        if not extras:
            return out
        if self.projector is not None:
            out["kd"] = self.projector(hidden)
        if "tg_dest" in batch:
            out["target_set"] = p.new_zeros((n_batch, d)).index_copy(
                0, batch["tg_dest"], rx_sets[n_med:]
            )
        return out

    def align_pair(self, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(X, Y): projected target-med-set encoding (M_ token ids) and projected profile prompt."""
        if "target_set" not in out:
            raise ValueError("the batch has no target sets: collate it with target_sets=True")
        return self.x_projector(out["target_set"]), self.y_projector(out["profile"])


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric standard InfoNCE (positive in the denominator) on cosine similarity / tau."""
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / tau
    labels = torch.arange(len(x), device=x.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


def student_loss(
    model: LeaderStudent,
    batch: dict,
    alpha: float = 0.4,
    beta: float = 0.005,
    tau: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Loss terms: ``bce`` + alpha * ``kd`` + beta * ``align``; ``total`` is their sum.

    KD is skipped (zero) when the model has no projector or the batch carries no teacher feature;
    alignment is skipped when disabled or with fewer than 2 samples (no negatives).
    """
    out = model(batch)
    bce = F.binary_cross_entropy_with_logits(out["logits"], batch["targets"])
    zero = out["logits"].new_zeros(())
    kd = align = zero
    if "kd" in out and "teacher_hidden" in batch and alpha:
        kd = F.mse_loss(out["kd"], batch["teacher_hidden"])
    if model.config["align_enabled"] and beta and len(batch["targets"]) > 1:
        x, y = model.align_pair(out)
        align = info_nce(x, y, tau)
    total = bce + alpha * kd + beta * align
    return {"total": total, "bce": bce, "kd": kd, "align": align}


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


_POOL: dict[int, Any] = {}  # inference thread pools by size, made on first use


def inference_workers() -> int:
    """Threads for large inference requests: one per CPU core."""
    return max(1, os.cpu_count() or 1)


def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="leader-student")
    return _POOL[workers]


def predict_proba_encoded(
    model: LeaderStudent,
    enc: EncodedSamples,
    batch_size: int = 256,
    workers: int | None = None,
) -> np.ndarray:
    """Sigmoid probabilities [N, M] in input order (model put in eval mode, no autograd).

    Every operation runs on one intra-op thread: on a model this small OpenMP synchronisation
    costs more than a second thread gains (and far more when another job holds a core). Requests
    of at least 2 x ``PARALLEL_ROWS`` rows are cut into pieces computed side by side by
    ``workers`` threads (default: one per core; torch releases the GIL inside its kernels). A
    sample's probabilities do not depend on the other samples of its batch.
    """
    if model.training:
        model.eval()
    n = len(enc.sample_ids)
    out = np.empty((n, model.config["n_medications"]), dtype=np.float32)
    pieces = n // PARALLEL_ROWS
    workers = min(workers or inference_workers(), pieces) if pieces > 1 else 1
    size = max(1, min(batch_size, -(-n // workers)))
    chunks = [(s, min(n, s + size)) for s in range(0, n, size)]

    def run(chunk: tuple[int, int]) -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP setting (pool threads have theirs)
        index = np.arange(*chunk)
        with torch.inference_mode():
            if len(index) <= SMALL_BATCH:
                logits = model.logits_padded(enc, index)
            else:
                logits = model.logits(collate(enc, index, target_sets=False, for_training=False))
            out[chunk[0] : chunk[1]] = torch.sigmoid(logits).numpy()

    with torch_threads(1):
        kernels.chosen()  # measured once per process, before the threads start
        if workers > 1 and len(chunks) > 1:
            list(_pool(workers).map(run, chunks))
        else:
            for chunk in chunks:
                run(chunk)
    return out


class StudentBundle:
    """What the ``student_model`` catalog entry loads: the module plus everything to use it."""

    def __init__(
        self, module: LeaderStudent, config: dict, vocab: dict, code_names: dict | None = None
    ):
        self.module = module.eval()
        self.config = config
        self.vocab = vocab
        self.code_names = code_names or {}
        self.n_parameters = count_parameters(module)
        self._encoder: SampleEncoder | None = None

    @property
    def encoder(self) -> SampleEncoder:
        """The vocabulary lookups, built once."""
        if self._encoder is None:
            self._encoder = SampleEncoder(
                self.vocab, self.config["max_visits"], self.config["max_codes"]
            )
        return self._encoder

    def encode(self, samples: pd.DataFrame, with_targets: bool = False) -> EncodedSamples:
        return self.encoder.encode_frame(samples, with_targets=with_targets)

    def predict_proba(self, samples: pd.DataFrame, batch_size: int = 256) -> np.ndarray:
        """Probabilities [N, M] (columns in ``vocab["medication"]`` order) for contract samples."""
        return predict_proba_encoded(self.module, self.encode(samples), batch_size)

    def predictions_table(self, samples: pd.DataFrame, batch_size: int = 256) -> pd.DataFrame:
        """The project's predictions format: ``sample_id`` + one column per medication."""
        return predictions_frame(
            samples["sample_id"].tolist(),
            self.predict_proba(samples, batch_size),
            self.vocab["medication"],
        )


STATE_FILE = "student.safetensors"
CONFIG_FILE = "student_config.json"
VOCAB_FILE = "vocab.json"
NAMES_FILE = "code_names.json"


def save_bundle(bundle: StudentBundle, directory) -> None:
    """Write ``student.safetensors``, ``student_config.json``, ``vocab.json``, ``code_names.json``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in bundle.module.state_dict().items()}
    save_file(state, str(directory / STATE_FILE), metadata={"format": "leader-student-v1"})
    for name, data in (
        (CONFIG_FILE, bundle.config),
        (VOCAB_FILE, bundle.vocab),
        (NAMES_FILE, bundle.code_names),
    ):
        (directory / name).write_text(json.dumps(data, indent=1, sort_keys=False))


def load_bundle(directory) -> StudentBundle:
    """Rebuild a :class:`StudentBundle` from a directory written by :func:`save_bundle`."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    missing = [f for f in (STATE_FILE, CONFIG_FILE, VOCAB_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"student model directory {directory} lacks {missing}; make it with "
            "`kedro run --pipeline=distill`"
        )
    config = json.loads((directory / CONFIG_FILE).read_text())
    vocab = json.loads((directory / VOCAB_FILE).read_text())
    names_path = directory / NAMES_FILE
    names = json.loads(names_path.read_text()) if names_path.is_file() else {}
    module = LeaderStudent(config)
    module.load_state_dict(load_file(str(directory / STATE_FILE)))
    return StudentBundle(module, config, vocab, names)


__all__ = [
    "EncodedSamples",
    "LeaderStudent",
    "SampleEncoder",
    "StudentBundle",
    "collate",
    "encode_samples",
    "load_bundle",
    "make_config",
    "predict_proba_encoded",
    "save_bundle",
    "student_loss",
]
