"""The evaluation report: markdown tables and matplotlib figures from the metrics document.

Inputs are the JSON documents of the evaluate stage (``metrics`` from
``evaluation.evaluate_models``, ``efficiency`` from ``efficiency.measure``, ``learning_curve`` from
``evaluation.learning_curve``), the ``ingest_report`` and, when a GPU run was made, the JSON
written by ``scripts/gpu_efficiency.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from leader_kedro.contracts import GROUPS, ORACLE, RARE_GROUPS
from leader_kedro.contracts import MODEL_LABELS as DEFAULT_LABELS

GROUP_LABELS = {
    "overall": "overall",
    "single_visit": "single-visit",
    "multi_visit": "multi-visit",
    "rare_dx": "rare dx",
    "common_dx": "no rare dx",
}
TABLE_METRICS = ("jaccard", "prauc", "f1", "precision", "recall", "n_med")
METRIC_LABELS = {
    "jaccard": "Jaccard",
    "prauc": "PRAUC",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "n_med": "#MED",
    "ddi_rate": "DDI (pooled)",
    "ddi_rate_per_visit": "DDI (per visit)",
}


def load_optional_json(path: str | Path | None) -> dict | None:
    """The JSON at ``path`` or None when no path is set or the file is absent."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _label(model: str, labels: Mapping[str, str] | None) -> str:
    return (labels or {}).get(model) or DEFAULT_LABELS.get(model, model)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(summary: Mapping[str, float] | None, digits: int = 4) -> str:
    """``mean ± std [ci_low, ci_high]`` of a rounds summary."""
    if not summary or summary.get("rounds", 0) == 0:
        return "n/a"
    return (
        f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} "
        f"[{summary['ci_low']:.{digits}f}, {summary['ci_high']:.{digits}f}]"
    )


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_rows(
    doc: Mapping[str, Any], protocol: str, group: str = "overall", labels=None
) -> list[list[str]]:
    """One row per model: threshold, the round metrics (mean ± std [95% CI]) and DDI."""
    rows = []
    for model, per_protocol in doc["models"].items():
        res = per_protocol.get(protocol, {}).get(group) or {}
        rounds, point = res.get("rounds", {}), res.get("point", {})
        row = [_label(model, labels), _fmt(res.get("threshold"), 2)]
        row += [_ms(rounds.get(m), 2 if m == "n_med" else 4) for m in TABLE_METRICS]
        for m in ("ddi_rate", "ddi_rate_per_visit"):
            row.append(_ms(rounds[m]) if m in rounds else _fmt(point.get(m)))
        rows.append(row)
    return rows


def render_markdown(
    doc: Mapping[str, Any],
    efficiency: Mapping[str, Any] | None,
    ingest_report: Mapping[str, Any] | None,
    gpu: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    plots: Mapping[str, str] | None = None,
    targets: Mapping[str, float] | None = None,
    learning_curve: Mapping[str, Any] | None = None,
    node_timings: Mapping[str, Any] | None = None,
    paired: Mapping[str, Any] | None = None,
) -> str:
    """The whole markdown report: one section after another, headed by the paired comparisons
    (``paired``, from ``evaluation.paired.paired_comparisons``)."""
    out: list[str] = [
        *_section_title(doc),
        *_section_paired(paired),
        *_section_dataset(ingest_report),
        *_section_protocols(doc),
        *_section_headline(doc, labels),
        *_section_comparison(doc, labels),
        *_section_groups(doc, labels),
        *_section_headroom(doc, learning_curve, labels, ingest_report),
        *_section_thresholds(doc, labels),
        *_section_postprocess(doc, labels),
        *_section_efficiency(efficiency, targets),
        *_section_gpu_efficiency(gpu, efficiency),
        *_section_node_timings(node_timings),
        *_section_plots(plots),
    ]
    return "\n".join(out)


def _section_title(doc: Mapping[str, Any]) -> list[str]:
    """Title and the one-paragraph description of the test split."""
    overall = doc.get("groups", {}).get("overall", {})
    return [
        "# LEADER evaluation report",
        "",
        f"Test split: {overall.get('samples', 'n/a')} samples "
        f"({overall.get('patients', 'n/a')} patients), {doc.get('n_medications')} "
        f"medications (ATC-3), seed {doc.get('seed')}. In the protocol tables (after the paired "
        "comparisons) all models are evaluated on the same test samples with the same resampling "
        f"indices; their intervals are {int(100 * doc.get('ci', 0.95))}% percentile intervals "
        "over the rounds.",
        "",
    ]


def _signed(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}"


def _paired_cell(row: Mapping[str, Any] | None) -> str:
    """``mean [ci_low, ci_high]`` with ▲ / ▼ where the interval lies above / below 0."""
    if not row:
        return "n/a"
    mark = ""
    if row.get("excludes_zero"):
        mark = " ▲" if row["ci_low"] > 0 else " ▼"
    return f"{_signed(row['mean'])} [{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]{mark}"


def _section_paired(paired: Mapping[str, Any] | None) -> list[str]:
    """## Paired comparisons: one row per comparison, one column per group, ``A - B`` of the
    per-sample PRAUC with its bootstrap interval over patients and seeds, and what was skipped."""
    out = ["## Paired comparisons (patient bootstrap over seeds)", ""]
    if not paired:
        return [*out, "Not computed (no `paired` document).", ""]
    level = int(round(100 * paired.get("level", 0.95)))
    rows = list(paired.get("rows", []))
    out += [
        f"Each cell is the difference A − B of the per-sample PRAUC (average precision of a "
        f"test sample's probabilities against its labels), averaged over the test samples of the "
        f"group, each model's PRAUC averaged over its seeds; in brackets the {level}% percentile "
        f"interval over {paired.get('rounds')} bootstrap rounds that draw the test **patients** "
        "with replacement (every sample of a drawn patient) and each model's **seeds** with "
        "replacement (the same draws for two models trained on the same seeds; the teacher, the "
        "baselines and the oracle have one prediction table each). ▲ / ▼: the interval lies "
        "entirely above / below 0 (A / B is better); no mark: the data cannot tell them apart. "
        "These are the comparisons this report stands on; the LEADER and SafeDrug protocol tables "
        "below are replication numbers (unpaired rounds over one run of each model).",
        "",
    ]
    if rows:
        groups = list(dict.fromkeys(r["group"] for r in rows))
        comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
        by_key = {(r["comparison"], r["group"]): r for r in rows}
        sizes = {r["group"]: (r["n_samples"], r["n_patients"]) for r in rows}
        head = ["A − B", "seeds (A / B)"] + [
            f"{GROUP_LABELS.get(g, g)} (n={sizes[g][0]}, {sizes[g][1]} patients)" for g in groups
        ]
        table = []
        for comp in comparisons:
            first = next(r for r in rows if r["comparison"] == comp)
            seeds = first["n_seeds"]
            a, b = first["model_a"], first["model_b"]
            table.append(
                [
                    f"`{a}` − `{b}`",
                    f"{seeds.get(a, '?')} / {seeds.get(b, '?')}",
                    *[_paired_cell(by_key.get((comp, g))) for g in groups],
                ]
            )
        out += [_md_table(head, table), ""]
    else:
        out += ["No comparison could be made.", ""]
    skipped = paired.get("skipped") or []
    if skipped:
        out.append("Skipped:")
        out += [
            f"- {s['comparison']}"
            + (f" ({s['group']})" if s.get("group") else "")
            + f": {s['reason']}"
            for s in skipped
        ]
        out.append("")
    return out


def _section_dataset(ingest_report: Mapping[str, Any] | None) -> list[str]:
    """## Dataset: the cohort statistics and the per-split sample counts of the ingest report."""
    out = ["## Dataset", ""]
    if not ingest_report:
        return [*out, "No ingest report available.", ""]
    cohort = ingest_report.get("cohort", {})
    out.append(f"Source: `{ingest_report.get('source', 'n/a')}`.")
    out.append("")
    out.append(
        _md_table(
            ["statistic", "value"],
            [[k, _fmt(v) if isinstance(v, float) else v] for k, v in _flatten(cohort).items()],
        )
    )
    samples = ingest_report.get("samples")
    if isinstance(samples, Mapping) and samples:
        out.append("")
        keys = sorted({k for v in samples.values() if isinstance(v, Mapping) for k in v})
        out.append(
            _md_table(
                ["split", *keys],
                [
                    [split, *[v.get(k, "") for k in keys]]
                    for split, v in samples.items()
                    if isinstance(v, Mapping)
                ],
            )
        )
    out.append("")
    return out


def _section_protocols(doc: Mapping[str, Any]) -> list[str]:
    """## Protocols: each evaluation protocol, the ground-truth DDI and how metrics are computed."""
    out = ["## Protocols", ""]
    for name, proto in doc.get("protocols", {}).items():
        out.append(f"- **{name}**: {proto.get('label', '')}")
    gt = doc.get("ground_truth_ddi")
    if gt:
        out.append(
            f"- Ground-truth DDI rate of the test labels: pooled {gt['pooled']:.4f}, per-visit mean "
            f"{gt['per_visit']:.4f}; ground-truth #MED {doc.get('ground_truth_n_med', float('nan')):.2f}."
        )
    out.append(
        "- Metrics are per sample (Jaccard, F1, precision, recall at the threshold, strict `>`; "
        "PRAUC = per-sample average precision, threshold-free), then averaged per visit or per "
        "patient. DDI (pooled) = interacting predicted pairs / all predicted pairs over the split; "
        "DDI (per visit) = mean of the per-visit ratios over visits with at least two predicted drugs. "
        "Where DDI is not part of a protocol's rounds it is computed once on the whole split."
    )
    out.append("")
    return out


def _section_headline(doc: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    """## Every model, overall, under the `tuned` protocol (else the first); none without
    protocols. Replication numbers: the paired comparisons head the report."""
    protocols = doc.get("protocols", {})
    head_protocol = "tuned" if "tuned" in protocols else next(iter(protocols), None)
    if not head_protocol:
        return []
    rows = []
    for model, per_protocol in doc["models"].items():
        res = per_protocol.get(head_protocol, {}).get("overall") or {}
        r, pt = res.get("rounds", {}), res.get("point", {})
        rows.append(
            [_label(model, labels), _fmt(res.get("threshold"), 2)]
            + [_ms(r.get(m), 1 if m == "n_med" else 3) for m in ("prauc", "jaccard", "f1", "n_med")]
            + [_fmt(pt.get("ddi_rate"))]
        )
    return [
        f"## Every model on the same test split (protocol `{head_protocol}`, overall; "
        "replication numbers)",
        "",
        _md_table(["model", "threshold", "PRAUC", "Jaccard", "F1", "#MED", "DDI (pooled)"], rows),
        "",
    ]


def _section_comparison(doc: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    """## Comparison: one table of all metrics per protocol, all test samples."""
    out = ["## Comparison (test split, all samples)", ""]
    header = [
        "model",
        "threshold",
        *[METRIC_LABELS[m] for m in TABLE_METRICS],
        METRIC_LABELS["ddi_rate"],
        METRIC_LABELS["ddi_rate_per_visit"],
    ]
    for name, proto in doc.get("protocols", {}).items():
        out += [f"### Protocol `{name}`", "", f"_{proto.get('label', '')}_", ""]
        out.append(_md_table(header, comparison_rows(doc, name, "overall", labels)))
        out.append("")
    return out


def _groups_present(doc: Mapping[str, Any]) -> list[str]:
    """The history groups, then the rare-code strata when the metrics hold them."""
    sizes = doc.get("groups", {})
    return [g for g in (*GROUPS, *RARE_GROUPS) if g in sizes]


def _section_groups(doc: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    """## Groups: group sizes, then per protocol PRAUC and Jaccard of every model in each group:
    single- vs multi-visit (history) and, beside them, the rare-code strata."""
    groups = doc.get("groups", {})
    present = _groups_present(doc)
    out = ["## Groups: history (single- vs multi-visit) and rare codes", ""]
    if "rare_dx" in groups:
        out += [
            f"`rare dx`: the current visit holds a diagnosis seen at most "
            f"{doc.get('rare_code_max_count', 5)} times in the train visits (a name can still "
            "carry knowledge where an id embedding has too few examples); `no rare dx`: the rest.",
            "",
        ]
    out.append(
        _md_table(
            ["group", "samples", "patients"],
            [
                [GROUP_LABELS.get(g, g), s.get("samples"), s.get("patients")]
                for g, s in groups.items()
            ],
        )
    )
    out.append("")
    for name in doc.get("protocols", {}):
        for metric, title in (("prauc", "PRAUC"), ("jaccard", "Jaccard")):
            rows = []
            for model, per_protocol in doc["models"].items():
                row = [_label(model, labels)]
                for g in present:
                    rounds = (per_protocol.get(name, {}).get(g) or {}).get("rounds", {})
                    row.append(_ms(rounds.get(metric), 3))
                rows.append(row)
            head = ["model"] + [GROUP_LABELS.get(g, g) for g in present]
            out += [f"Protocol `{name}`, {title}:", "", _md_table(head, rows), ""]
    return out


def _section_headroom(
    doc: Mapping[str, Any],
    curve: Mapping[str, Any] | None,
    labels: Mapping[str, str] | None,
    ingest_report: Mapping[str, Any] | None,
) -> list[str]:
    """## Headroom: the oracle row and the logistic-regression learning curve."""
    out = ["## Headroom: the oracle and the learning curve", ""]
    if ORACLE in doc.get("models", {}):
        out.append(
            f"`{_label(ORACLE, labels)}` is a row of every table above: the probabilities the "
            "synthetic generator drew the labels from, given everything it knows (the conditions, "
            "coded or not, each patient's regimens and routine). No model sees all of that, so it "
            "is a ceiling, not a target."
        )
    else:
        source = (ingest_report or {}).get("source", "this source")
        out.append(
            f"No oracle: only the synthetic generator knows true probabilities (source `{source}`)."
        )
    out.append("")
    if not curve or not curve.get("curve"):
        return [*out, "No learning curve (`evaluate.learning_curve.enabled: false`).", ""]
    groups = [g for g in ("overall", "multi_visit", "rare_dx") if g in curve.get("groups", {})]
    head = ["model", "train samples", "threshold"] + [
        f"{GROUP_LABELS[g]} {m}" for g in groups for m in ("PRAUC", "Jaccard")
    ]

    def cells(res: Mapping[str, Any]) -> list[str]:
        return [_fmt((res.get(g) or {}).get(m), 3) for g in groups for m in ("prauc", "jaccard")]

    rows = [
        [
            f"logistic regression, {100 * r['fraction']:.0f}% of train",
            r["train_samples"],
            _fmt(r["threshold"], 2),
            *cells(r),
        ]
        for r in curve["curve"]
    ]
    if curve.get("oracle"):
        rows.append(
            [
                _label(ORACLE, labels),
                "",
                _fmt(curve["oracle"]["threshold"], 2),
                *cells(curve["oracle"]),
            ]
        )
    out += [
        "The multi-hot logistic regression refitted on nested, seeded shares of the train patients "
        "(threshold tuned on val; all test samples, point estimates). What it still gains between "
        "the last two points is headroom that more data closes; what is left between its last "
        "point and the oracle is what this much data does not give a linear model over code ids: "
        "the room for knowledge (history, interactions, the meaning of names).",
        "",
        _md_table(head, rows),
        "",
    ]
    return out


def _section_thresholds(doc: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    """## Thresholds tuned on val: per model, the threshold, its objective and the val score."""
    table = _md_table(
        ["model", "threshold", "objective", "val score"],
        [
            [_label(m, labels), _fmt(t["threshold"], 2), t["objective"], _fmt(t["score"])]
            for m, t in doc.get("thresholds", {}).items()
        ],
    )
    return ["## Thresholds tuned on val", "", table, ""]


def _section_postprocess(doc: Mapping[str, Any], labels: Mapping[str, str] | None) -> list[str]:
    """## DDI-aware post-processing: per model, the accuracy/safety curve over DDI targets."""
    post = doc.get("postprocess") or {}
    out = ["## DDI-aware post-processing (accuracy vs safety)", ""]
    if not post:
        return [*out, "Disabled (`evaluate.ddi_postprocess.enabled: false`).", ""]
    first = next(iter(post.values()))
    out.append(f"_{first.get('definition', '')}_")
    out.append("")
    for model, res in post.items():
        rows = [
            [
                "none" if r["target"] is None else _fmt(r["target"], 3),
                r["removed"],
                _fmt(r["ddi_rate"]),
                _fmt(r["ddi_rate_per_visit"]),
                _fmt(r.get("jaccard")),
                _fmt(r.get("f1")),
                _fmt(r.get("prauc_masked")),
                _fmt(r["n_med"], 2),
            ]
            for r in res["curve"]
        ]
        out += [
            f"{_label(model, labels)} (threshold {res['threshold']:.2f}, protocol `{res['protocol']}` threshold, all test samples):",
            "",
            _md_table(
                [
                    "target DDI",
                    "drugs removed",
                    "DDI (pooled)",
                    "DDI (per visit)",
                    "Jaccard",
                    "F1",
                    "PRAUC (removed = 0)",
                    "#MED",
                ],
                rows,
            ),
            "",
        ]
    return out


def _section_efficiency(
    efficiency: Mapping[str, Any] | None, targets: Mapping[str, float] | None
) -> list[str]:
    """## Efficiency: the CPU teacher-vs-student table and, when set, the throughput target."""
    out = ["## Efficiency: teacher vs student", ""]
    if not efficiency:
        return [*out, "Not measured (`evaluate.efficiency.enabled: false`).", ""]
    from leader_kedro.evaluation.efficiency import format_table

    out.append(
        f"Same device and test samples; teacher backbone `{efficiency.get('teacher_backbone')}`, "
        f"torch threads {_threads(efficiency.get('torch_threads'))}, latency over the first "
        f"{efficiency['teacher'].get('latency_samples')} test samples at batch 1, throughput over "
        f"{efficiency['teacher'].get('throughput_samples')} samples. Memory is the peak growth "
        "during one batch (RSS on CPU, CUDA max allocated on GPU) on top of the loaded weights."
    )
    out += ["", "```", format_table(dict(efficiency)), "```", ""]
    t = (targets or {}).get("cpu_throughput_ratio")
    if t:
        r = efficiency["ratios"]
        figures = ", ".join(
            f"batch {k[len('throughput_b') :]}: {v:.1f}x"
            for k, v in r.items()
            if k.startswith("throughput_b") and v is not None
        )
        best = max(
            (v for k, v in r.items() if k.startswith("throughput_b") and v is not None),
            default=0,
        )
        out.append(
            f"CPU target: student throughput ≥ {t:.0f}x the teacher's — measured {figures} ({'met' if best >= t else 'NOT met'})."
        )
        out.append("")
    return out


def _section_gpu_efficiency(
    gpu: Mapping[str, Any] | None, efficiency: Mapping[str, Any] | None
) -> list[str]:
    """### GPU: the figures of ``scripts/gpu_efficiency.py``, or why there are none."""
    out = ["### GPU: 7B-shaped causal teacher vs student", ""]
    if gpu:
        out.append(_gpu_section(gpu, efficiency))
    else:
        out.append(
            "No GPU figures: `scripts/gpu_efficiency.py` has not been run on a GPU for this project "
            "(no GPU was available). Run it on a CUDA machine and re-run `kedro run --pipeline=evaluate` "
            "to include them here."
        )
    out.append("")
    return out


def _section_node_timings(timings: Mapping[str, Any] | None) -> list[str]:
    """## Run time per node: the ``node_timings`` of :class:`leader_kedro.hooks.NodeTimingHook`.

    Nodes of the run that writes the report come first, in the order they started; nodes timed
    in earlier runs (a flow run stage by stage) follow, labelled with the run's start time.
    The report is written before the nodes that come after it in the run.
    """
    nodes = dict((timings or {}).get("nodes") or {})
    if not nodes:
        return []
    runs = dict(timings.get("runs") or {}) if timings else {}
    latest = (timings or {}).get("latest_run")
    this = sorted(
        ((n, e) for n, e in nodes.items() if e.get("run") == latest),
        key=lambda item: item[1].get("started_s", 0.0),
    )
    earlier = sorted(
        ((n, e) for n, e in nodes.items() if e.get("run") != latest),
        key=lambda item: (item[1].get("finished_at", ""), item[1].get("started_s", 0.0)),
    )
    run = runs.get(latest, {})
    out = [
        "## Run time per node",
        "",
        f"Wall seconds per node (`data/08_reporting/node_timings.json`). This run: pipeline "
        f"`{run.get('pipeline', '?')}`, started {run.get('started_at', '?')}, {run.get('nodes', '?')} "
        "nodes; the report is written before the run ends, so the nodes after it are not listed.",
        "",
    ]
    rows = [
        [name, f"{e.get('wall_s', 0.0):.1f}", e.get("status", ""), "this run"] for name, e in this
    ]
    rows += [
        [
            name,
            f"{e.get('wall_s', 0.0):.1f}",
            e.get("status", ""),
            f"earlier run ({runs.get(e.get('run'), {}).get('started_at') or e.get('finished_at', '?')})",
        ]
        for name, e in earlier
    ]
    total = sum(float(e.get("wall_s", 0.0)) for _, e in this)
    rows.append(["**total of this run's nodes above**", f"**{total:.1f}**", "", ""])
    out += [_md_table(["node", "wall s", "status", "measured in"], rows), ""]
    return out


def _section_plots(plots: Mapping[str, str] | None) -> list[str]:
    """## Plots: the figure links, when there are any."""
    if not plots:
        return []
    out = ["## Plots", ""]
    for title, path in plots.items():
        out += [f"![{title}]({path})", ""]
    return out


def _threads(value) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _gpu_section(gpu: Mapping[str, Any], efficiency: Mapping[str, Any] | None) -> str:
    lines = [
        f"Device: {gpu.get('device_name', 'n/a')}; teacher: {gpu.get('teacher', {}).get('shape', 'n/a')}, bf16, prompt length {gpu.get('seq_len')}.",
        "",
    ]
    rows = []
    for side in ("teacher", "student", "student_cpu"):
        r = gpu.get(side)
        if not r:
            continue
        rows.append(
            [
                side,
                r.get("device", ""),
                f"{r.get('n_parameters', 0):,}",
                _fmt(r.get("latency_ms_p50"), 3),
                _fmt(r.get("latency_ms_p95"), 3),
                _fmt((r.get("throughput") or {}).get("1"), 1),
                _fmt((r.get("throughput") or {}).get("32"), 1),
                _fmt((r.get("peak_memory_bytes") or {}).get("32", 0) / 2**20, 1)
                if r.get("peak_memory_bytes")
                else "n/a",
            ]
        )
    lines.append(
        _md_table(
            [
                "model",
                "device",
                "parameters",
                "p50 ms (b1)",
                "p95 ms (b1)",
                "samples/s b1",
                "samples/s b32",
                "peak MiB (b32)",
            ],
            rows,
        )
    )
    ratios = gpu.get("ratios") or {}
    if ratios:
        lines += [
            "",
            "Ratios: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items() if v is not None),
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_by_group(
    doc: Mapping[str, Any], protocol: str = "leader", metric: str = "prauc", labels=None
):
    """Grouped bars: one group of bars per patient group, one bar per model, CI error bars."""
    plt = _pyplot()
    models = list(doc["models"])
    groups = _groups_present(doc) or ["overall", "single_visit", "multi_visit"]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(models) * len(groups) / 3 + 3), 4.5))
    width = 0.8 / max(1, len(models))
    cmap = plt.get_cmap("tab10")
    for k, model in enumerate(models):
        means, lo, hi = [], [], []
        for g in groups:
            s = (doc["models"][model].get(protocol, {}).get(g) or {}).get("rounds", {}).get(metric)
            m = s["mean"] if s and s.get("rounds") else float("nan")
            means.append(m)
            lo.append(max(0.0, m - s["ci_low"]) if s and s.get("rounds") else 0)
            hi.append(max(0.0, s["ci_high"] - m) if s and s.get("rounds") else 0)
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(
            xs,
            means,
            width * 0.95,
            yerr=[lo, hi],
            capsize=3,
            label=_label(model, labels),
            color=cmap(k % 10),
        )
    sizes = doc.get("groups", {})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [f"{GROUP_LABELS[g]}\n(n={sizes.get(g, {}).get('samples', '?')})" for g in groups]
    )
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (mean, 95% interval)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} by patient group — protocol '{protocol}'")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=min(3, len(models)),
        frameon=False,
    )
    fig.tight_layout()
    return fig


def plot_ddi_tradeoff(doc: Mapping[str, Any], labels=None):
    """Jaccard (and masked PRAUC) against pooled DDI rate along the post-processing path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    post = doc.get("postprocess") or {}
    cmap = plt.get_cmap("tab10")
    models = list(doc["models"])
    for model, res in post.items():
        color = cmap(models.index(model) % 10 if model in models else 0)
        curve = res["curve"]
        x = [r["ddi_rate"] for r in curve]
        ax.plot(
            x,
            [r.get("jaccard") for r in curve],
            "-o",
            color=color,
            label=f"{_label(model, labels)}: Jaccard",
        )
        ax.plot(
            x,
            [r.get("prauc_masked") for r in curve],
            "--s",
            color=color,
            alpha=0.6,
            label=f"{_label(model, labels)}: PRAUC (removed=0)",
        )
        ax.annotate(
            "no post-processing",
            (x[0], curve[0].get("jaccard") or 0),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    gt = doc.get("ground_truth_ddi")
    if gt:
        ax.axvline(
            gt["pooled"], color="grey", ls=":", label=f"ground-truth DDI ({gt['pooled']:.3f})"
        )
    if not post:
        ax.text(
            0.5,
            0.5,
            "DDI post-processing disabled",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("DDI rate of the predicted sets (pooled) — lower is safer")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs safety: greedy DDI-aware removal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_efficiency(efficiency: Mapping[str, Any] | None, gpu: Mapping[str, Any] | None = None):
    """Latency (p50 at batch 1), throughput and memory bars, log scale, teacher vs student."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    bars: list[tuple[str, dict]] = []
    if efficiency:
        bars += [
            (f"teacher\n({efficiency['teacher']['device']})", efficiency["teacher"]),
            (f"student\n({efficiency['student']['device']})", efficiency["student"]),
        ]
    if gpu:
        for side, name in (
            ("teacher", "7B teacher"),
            ("student", "student"),
            ("student_cpu", "student"),
        ):
            if gpu.get(side):
                bars.append((f"{name}\n({gpu[side].get('device', '')})", gpu[side]))
    if not bars:
        for ax in axes:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return fig
    names = [b[0] for b in bars]
    colors = ["#d62728" if n.startswith(("teacher", "7B")) else "#1f77b4" for n in names]
    lat = [b[1].get("latency_ms_p50") or float("nan") for b in bars]
    big = max(int(k) for b in bars for k in (b[1].get("throughput") or {"1": 0}))
    thr = [(b[1].get("throughput") or {}).get(str(big), float("nan")) for b in bars]
    mem = []
    for _, r in bars:
        peak = (r.get("peak_memory_bytes") or {}).get(str(big), 0) or 0
        mem.append(((r.get("weight_bytes") or 0) + peak) / 2**20)

    def ratio(values, higher_is_better):
        if len(values) < 2 or not (values[0] > 0 and values[1] > 0):
            return ""
        r = values[1] / values[0] if higher_is_better else values[0] / values[1]
        better = "higher" if higher_is_better else "lower"
        return f"\n(student {r:.0f}x {better} than {names[0].split(chr(10))[0]} on {bars[0][1].get('device', '')})"

    for ax, values, title, unit in (
        (axes[0], lat, "Latency per sample, batch 1 (p50)" + ratio(lat, False), "ms"),
        (axes[1], thr, f"Throughput, batch {big}" + ratio(thr, True), "samples / s"),
        (axes[2], mem, f"Memory: weights + peak growth, batch {big}" + ratio(mem, False), "MiB"),
    ):
        ax.bar(range(len(values)), values, color=colors)
        ax.set_yscale("log")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(f"{unit} (log scale)")
        ax.grid(axis="y", alpha=0.3, which="both")
        for i, v in enumerate(values):
            if v == v and v > 0:
                ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle("Teacher vs student inference cost")
    fig.tight_layout()
    return fig
