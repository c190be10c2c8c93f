"""The student as it was before issue 10 (commit 9e16319): a frozen copy, for comparison only.

Used by ``python -m leader_kedro.bench student`` (the "before" column, measured side by side with the
current code in one run) and by the equivalence tests (the same weights and the same samples give
the same predictions within 1e-5 in both implementations). Nothing in the pipelines imports it.
Do not edit or "fix" this file: its point is to stay what the student was. The parameter names of
its module are those of :class:`leader_kedro.student.model.LeaderStudent`, so one state dict loads
into both.
"""

# mypy: ignore-errors
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.pyfunc import PythonModel
from torch import nn

from leader_kedro.contracts import PROFILE_FIELDS

PAD = 0
PROFILE_COLUMNS = (*PROFILE_FIELDS, "age")
OUTPUT_COLUMNS = ["row", "rank", "atc3", "name", "probability"]


@dataclass
class EncodedSamples:
    """Per-sample token ids (lists, not yet padded) plus what was cut or dropped."""

    sample_ids: list[str]
    diagnoses: list[list[list[int]]]  # [sample][visit in window][code]
    procedures: list[list[list[int]]]
    medications: list[list[list[int]]]  # shifted: slot 0 empty (profile), slot t = visit t-1
    profile: np.ndarray  # [N, n_fields + 1] (last column: age bin)
    targets: np.ndarray  # [N, M] float32 multi-hot
    target_tokens: list[list[int]]  # M_<code> token ids of the target set (alignment)
    report: dict = field(default_factory=dict)


def _age_bin(age, edges: list) -> int:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return 0
    return int(np.searchsorted(np.asarray(edges, dtype=float), float(age), side="right")) + 1


def encode_samples(
    samples: pd.DataFrame,
    vocab: dict,
    max_visits: int = 10,
    max_codes: int = 100,
    with_targets: bool = True,
) -> EncodedSamples:
    """Map sample rows to token ids, keeping the last ``max_visits`` visits (current visit last).

    Unknown codes are dropped and counted; codes beyond ``max_codes`` in one visit are cut and
    counted (in ``report``); nothing raises for long histories or large visits.
    """
    required = ["sample_id", "diagnoses", "procedures", "medications"]
    if with_targets:
        required.append("target")
    missing = [c for c in required if c not in samples.columns]
    if missing:
        raise ValueError(
            f"samples table lacks column(s) {missing}; expected the sample contract of docs/contracts.md"
        )
    if max_visits < 1 or max_codes < 1:
        raise ValueError(f"max_visits ({max_visits}) and max_codes ({max_codes}) must be >= 1")
    tok = {t: i for i, t in enumerate(vocab["tokens"])}
    med_index = {m: i for i, m in enumerate(vocab["medication"])}
    fields = list(vocab["profile"])
    field_index = [{v: i for i, v in enumerate(vocab["profile"][f])} for f in fields]
    report: dict[str, Any] = {
        "samples": len(samples),
        "samples_visits_truncated": 0,
        "visits_dropped_by_window": 0,
        "visits_codes_truncated": 0,
        "codes_truncated": 0,
        "unknown_codes_dropped": {"diagnosis": 0, "procedure": 0, "medication": 0},
        "unknown_targets_dropped": 0,
        "unknown_profile_values": 0,
    }

    def ids(codes, prefix: str, kind: str) -> list[int]:
        out = []
        for c in codes:
            i = tok.get(f"{prefix}_{c}")
            if i is None:
                report["unknown_codes_dropped"][kind] += 1
            else:
                out.append(i)
        if len(out) > max_codes:
            report["visits_codes_truncated"] += 1
            report["codes_truncated"] += len(out) - max_codes
            out = out[:max_codes]
        return out

    n = len(samples)
    profile = np.zeros((n, len(fields) + 1), dtype=np.int64)
    targets = np.zeros((n, len(med_index)), dtype=np.float32)
    dx_all, px_all, rx_all, tgt_all = [], [], [], []
    for r, row in enumerate(samples.itertuples(index=False)):
        dx, px, rx = list(row.diagnoses), list(row.procedures), list(row.medications)
        n_vis = len(dx)
        if n_vis == 0 or len(px) != n_vis or len(rx) != n_vis - 1:
            raise ValueError(
                f"sample {row.sample_id}: expected len(diagnoses) == len(procedures) == "
                f"len(medications) + 1 >= 1 (current visit last), got {len(dx)}, {len(px)}, {len(rx)}"
            )
        start = max(0, n_vis - max_visits)
        if start:
            report["samples_visits_truncated"] += 1
            report["visits_dropped_by_window"] += start
        dx_all.append([ids(v, "D", "diagnosis") for v in dx[start:]])
        px_all.append([ids(v, "P", "procedure") for v in px[start:]])
        # slot 0 of the window is the profile; slot t holds the meds of window visit t-1
        rx_all.append([[]] + [ids(v, "M", "medication") for v in rx[start : n_vis - 1]])
        for j, f in enumerate(fields):
            value = getattr(row, f, None) if f in samples.columns else None
            idx = field_index[j].get(value if value is not None else "unknown")
            if idx is None:
                report["unknown_profile_values"] += 1
                idx = 0
            profile[r, j] = idx
        profile[r, -1] = _age_bin(getattr(row, "age", None), vocab["age_bins"])
        if with_targets:
            t_tokens = []
            for m in row.target:
                k = med_index.get(m)
                if k is None or f"M_{m}" not in tok:
                    report["unknown_targets_dropped"] += 1
                    continue
                targets[r, k] = 1.0
                t_tokens.append(tok[f"M_{m}"])
            tgt_all.append(t_tokens[:max_codes])
        else:
            tgt_all.append([])
    return EncodedSamples(
        sample_ids=[str(s) for s in samples["sample_id"]],
        diagnoses=dx_all,
        procedures=px_all,
        medications=rx_all,
        profile=profile,
        targets=targets,
        target_tokens=tgt_all,
        report=report,
    )


def _pad3(seqs: list[list[list[int]]], n_vis: int, n_codes: int) -> torch.Tensor:
    out = torch.full((len(seqs), n_vis, max(n_codes, 1)), PAD, dtype=torch.long)
    for b, visits in enumerate(seqs):
        for v, codes in enumerate(visits):
            if codes:
                out[b, v, : len(codes)] = torch.as_tensor(codes, dtype=torch.long)
    return out


def collate(enc: EncodedSamples, index, teacher_hidden: torch.Tensor | None = None) -> dict:
    """Pad the selected samples into one batch; visits are right-padded, current visit last real one.

    Keys: ``diagnoses``/``procedures``/``medications`` [B, V, C] token ids (0 = pad),
    ``visit_mask`` [B, V] bool, ``positions`` [B, V] distance of each visit from the current one,
    ``profile`` [B, F+1], ``targets`` [B, M], ``target_tokens`` [B, T] (0 = pad), and
    ``teacher_hidden`` [B, H] float32 when given.
    """
    index = [int(i) for i in index]
    dx = [enc.diagnoses[i] for i in index]
    px = [enc.procedures[i] for i in index]
    rx = [enc.medications[i] for i in index]
    n_vis = max(len(v) for v in dx)
    n_codes = max((len(v) for s in (dx + px + rx) for v in s), default=1)
    lengths = torch.as_tensor([len(v) for v in dx])
    visit_mask = torch.arange(n_vis)[None, :] < lengths[:, None]
    positions = (lengths[:, None] - 1 - torch.arange(n_vis)[None, :]).clamp(min=0)
    tt = [enc.target_tokens[i] for i in index]
    target_tokens = torch.zeros((len(index), max(1, max(len(t) for t in tt))), dtype=torch.long)
    for b, t in enumerate(tt):
        if t:
            target_tokens[b, : len(t)] = torch.as_tensor(t)
    batch = {
        "diagnoses": _pad3(dx, n_vis, n_codes),
        "procedures": _pad3(px, n_vis, n_codes),
        "medications": _pad3(rx, n_vis, n_codes),
        "visit_mask": visit_mask,
        "positions": positions * visit_mask,
        "profile": torch.as_tensor(enc.profile[index]),
        "targets": torch.as_tensor(enc.targets[index]),
        "target_tokens": target_tokens,
    }
    if teacher_hidden is not None:
        batch["teacher_hidden"] = teacher_hidden[index].float()
    return batch


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """TF-style layer norm (epsilon inside the square root), as bert_models.py."""

    def __init__(self, d: int, eps: float = 1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Drop(MHA(LN x)); x + Drop(FFN(LN x)); Drop. QKV without bias, GELU(tanh)."""

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.h, self.dk = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d)
        self.ln1, self.ln2 = LayerNorm(d), LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(attn_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, L, d]; mask [N, L] bool (True = real). Fully padded rows stay finite."""
        n, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, length, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dk)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.attn_drop(torch.softmax(scores, dim=-1))
        ctx = (attn @ v).transpose(1, 2).reshape(n, length, d)
        x = x + self.drop(self.out(ctx))
        x = x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x)), approximate="tanh"))))
        return self.drop(x)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis -2 of x [..., L, d] with mask [..., L]; an empty set gives a zero vector."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


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

    def profile_prompt(self, profile: torch.Tensor) -> torch.Tensor:
        """[B, F+1] ids -> [B, d] profile prompt p (or the learned padding vector)."""
        if not self.config["profile_enabled"]:
            return self.profile_pad.expand(profile.shape[0], -1)
        parts = [emb(profile[:, j]) for j, emb in enumerate(self.profile_embeddings)]
        return self.profile_proj(torch.cat(parts, dim=-1))

    def encode_sets(
        self, ids: torch.Tensor, trm: TransformerBlock, visit_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, V, C] token ids -> [B, V, d] via the set transformer + masked mean over codes.

        Only the sets of real visits are run through the transformer (padding visits stay zero),
        which saves most of the work on cohorts where few patients fill the visit window.
        """
        b, v, c = ids.shape
        keep = visit_mask.reshape(-1)
        flat = ids.reshape(b * v, c)[keep]
        mask = flat != PAD
        pooled = masked_mean(trm(self.embedding(flat), mask), mask)
        out = pooled.new_zeros((b * v, pooled.shape[-1]))
        out = out.index_copy(0, keep.nonzero().squeeze(1), pooled)
        return out.view(b, v, -1)

    def forward(self, batch: dict) -> dict:
        vmask = batch["visit_mask"]
        diag = self.encode_sets(batch["diagnoses"], self.diag_trm, vmask)
        proc = self.encode_sets(batch["procedures"], self.proc_trm, vmask)
        # slot 0 of the medication stream is the profile: its (empty) set is never encoded
        first = torch.arange(vmask.shape[1], device=vmask.device)[None, :] == 0
        med = self.encode_sets(batch["medications"], self.med_trm, vmask & ~first)
        p = self.profile_prompt(batch["profile"])
        med = torch.cat([p.unsqueeze(1), med[:, 1:]], dim=1)  # pseudo med record of visit 0
        pooled = []
        for stream in (diag, proc, med):
            if self.visit_position is not None:
                pos = batch["positions"].clamp(max=self.visit_position.num_embeddings - 1)
                stream = stream + self.visit_position(pos)
            pooled.append(masked_mean(self.visit_trm(stream, vmask), vmask))
        hidden = F.relu(self.head1(F.relu(torch.cat(pooled, dim=-1))))
        out = {"logits": self.head2(hidden), "hidden": hidden, "profile": p}
        if self.projector is not None:
            out["kd"] = self.projector(hidden)
        return out

    def align_pair(self, batch: dict, profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(X, Y): projected target-med-set encoding (M_ token ids) and projected profile prompt."""
        ids = batch["target_tokens"]
        mask = ids != PAD
        x = masked_mean(self.med_trm(self.embedding(ids), mask), mask)
        return self.x_projector(x), self.y_projector(profile)


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
        x, y = model.align_pair(batch, out["profile"])
        align = info_nce(x, y, tau)
    total = bce + alpha * kd + beta * align
    return {"total": total, "bce": bce, "kd": kd, "align": align}


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@torch.no_grad()
def predict_proba_encoded(
    model: LeaderStudent, enc: EncodedSamples, batch_size: int = 256
) -> np.ndarray:
    """Sigmoid probabilities [N, M] in input order (model put in eval mode)."""
    model.eval()
    n = len(enc.sample_ids)
    out = np.zeros((n, model.config["n_medications"]), dtype=np.float32)
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        out[idx] = torch.sigmoid(model(collate(enc, idx))["logits"]).numpy()
    return out


def _as_list(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return [_as_list(v) if isinstance(v, (list, tuple, np.ndarray)) else str(v) for v in value]


def records_to_samples(model_input: pd.DataFrame) -> pd.DataFrame:
    """Serving rows -> sample rows of the contract (``sample_id`` = the row position)."""
    if not isinstance(model_input, pd.DataFrame):
        model_input = pd.DataFrame(model_input)
    missing = [
        c for c in ("diagnoses", "procedures", "medications") if c not in model_input.columns
    ]
    if missing:
        raise ValueError(
            f"leader-student input lacks column(s) {missing}; expected diagnoses and procedures "
            "(list of visits, current visit last) and medications (past visits only, [] if none)"
        )
    rows = []
    for r, rec in enumerate(model_input.to_dict("records")):
        dx, px, rx = (_as_list(rec.get(c)) for c in ("diagnoses", "procedures", "medications"))
        if not dx or len(px) != len(dx) or len(rx) != len(dx) - 1:
            raise ValueError(
                f"leader-student input row {r}: expected len(diagnoses) == len(procedures) >= 1 and "
                f"len(medications) == len(diagnoses) - 1 (past visits only), got "
                f"{len(dx)}, {len(px)}, {len(rx)}"
            )
        row = {
            "sample_id": str(r),
            "n_past": len(dx) - 1,
            "diagnoses": dx,
            "procedures": px,
            "medications": rx,
        }
        for col in PROFILE_COLUMNS:
            value = rec.get(col)
            if col == "age":
                row[col] = float(value) if value is not None and value == value else float("nan")
            else:
                row[col] = "unknown" if value is None or value != value else str(value)
        rows.append(row)
    return pd.DataFrame(rows)


def rank_predictions(probs: np.ndarray, vocab: dict, code_names: dict, top_k) -> pd.DataFrame:
    """Long table of the top-k medications per row (all when k <= 0)."""
    meds = list(vocab["medication"])
    names = (code_names or {}).get("medication", {})
    out = []
    for r, p in enumerate(probs):
        k = int(top_k[r]) if top_k[r] and top_k[r] > 0 else len(meds)
        order = np.argsort(-p, kind="mergesort")[:k]
        for rank, j in enumerate(order, start=1):
            out.append((r, rank, meds[j], str(names.get(meds[j], "")), float(p[j])))
    frame = pd.DataFrame(out, columns=OUTPUT_COLUMNS)
    return frame.astype({"row": "int64", "rank": "int64", "probability": "float64"})


# ------------------------------------------------------------------------- old serving / training


def pyfunc_predict(
    module,
    vocab: dict,
    code_names: dict,
    config: dict,
    model_input: pd.DataFrame,
    default_top_k: int = 10,
    batch_size: int = 256,
) -> pd.DataFrame:
    """What ``LeaderStudentPyfunc.predict`` did: records -> samples frame -> encode -> rank."""
    samples = records_to_samples(model_input)
    enc = encode_samples(
        samples, vocab, config["max_visits"], config["max_codes"], with_targets=False
    )
    probs = predict_proba_encoded(module, enc, batch_size)
    if isinstance(model_input, pd.DataFrame) and "top_k" in model_input.columns:
        top_k = [default_top_k if v is None or v != v else int(v) for v in model_input["top_k"]]
    else:
        top_k = [default_top_k] * len(samples)
    return rank_predictions(probs, vocab, code_names, top_k)


def predict_proba(module, vocab: dict, config: dict, samples: pd.DataFrame, batch_size: int = 256):
    """What ``StudentBundle.predict_proba`` did."""
    enc = encode_samples(
        samples, vocab, config["max_visits"], config["max_codes"], with_targets=False
    )
    return predict_proba_encoded(module, enc, batch_size)


def train_epochs(
    module,
    enc: EncodedSamples,
    teacher_hidden,
    epochs: int,
    batch_size: int = 16,
    lr: float = 5e-4,
    alpha: float = 0.4,
    beta: float = 0.005,
    tau: float = 0.1,
    seed: int = 0,
) -> float:
    """The old training loop body (collate per batch, Adam), ``epochs`` times; returns seconds."""
    optim = torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(enc.sample_ids)
    started = time.perf_counter()
    for _ in range(epochs):
        module.train()
        order = torch.randperm(n, generator=gen).tolist()
        for s in range(0, n, batch_size):
            batch = collate(enc, order[s : s + batch_size], teacher_hidden)
            terms = student_loss(module, batch, alpha=alpha, beta=beta, tau=tau)
            optim.zero_grad()
            terms["total"].backward()
            optim.step()
    return time.perf_counter() - started


class LegacyPyfunc(PythonModel):
    """The old ``LeaderStudentPyfunc.predict`` as an MLflow python model (for the benchmark's
    "through MLflow" row): loads the same ``student_model`` artifact directory."""

    def __init__(self, top_k: int = 10):
        self.top_k = int(top_k)
        self.loaded = None

    def load_context(self, context):
        import json
        from pathlib import Path

        from safetensors.torch import load_file

        directory = Path(context.artifacts["student_model"])
        config = json.loads((directory / "student_config.json").read_text())
        vocab = json.loads((directory / "vocab.json").read_text())
        names = json.loads((directory / "code_names.json").read_text())
        module = LeaderStudent(config)
        module.load_state_dict(load_file(str(directory / "student.safetensors")))
        self.loaded = (module.eval(), vocab, names, config)

    def predict(self, context, model_input, params=None):
        module, vocab, names, config = self.loaded
        return pyfunc_predict(module, vocab, names, config, model_input, self.top_k)
