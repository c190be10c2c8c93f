#!/usr/bin/env python
"""GPU efficiency: a LLaMA-7B-shaped causal teacher (random weights, bf16) vs the LEADER(S) student.

Speed and memory do not depend on the weights, so both models are randomly initialised:

- teacher: ``transformers.LlamaModel`` with the LLaMA-7B shape (hidden 4096, 32 layers, 32 heads,
  intermediate 11008, vocab 32000) built directly on the device in bf16, last-token pooling and a
  Linear head over the medication vocabulary (as the LEADER teacher), fed ``--seq-len`` tokens
  (~ the MIMIC prompt length);
- student: ``leader_kedro.student.model.LeaderStudent`` from a config with MIMIC-III-like vocabulary sizes,
  fed collated batches of synthetic patients (``--visits`` visits, ~``--codes`` codes per visit).

Both are timed on pre-built inputs (token ids / collated tensors already on the device): p50/p95
latency at batch 1, throughput at ``--batch``, ``torch.cuda.max_memory_allocated``. The student is
also timed with a captured CUDA graph (and optionally ``torch.compile``); the best mode counts.
Finally the student is timed on ``--cpu-threads`` CPU threads (default 2) to compare a
2-core CPU student with the GPU teacher.

Usage (from the project root):
    python scripts/gpu_efficiency.py                      # on a CUDA machine, ~2-4 min on an H100
    python scripts/gpu_efficiency.py --device cpu --tiny  # smoke test on CPU with a tiny LLaMA
Writes ``data/08_reporting/gpu_efficiency.json`` (``--out``), which the evaluate report includes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LLAMA_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}
LLAMA_TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny LLaMA config (smoke test)")
    p.add_argument("--seq-len", type=int, default=512, help="teacher prompt length in tokens")
    p.add_argument("--batch", type=int, default=32, help="throughput batch size")
    p.add_argument(
        "--latency-iters", type=int, default=20, help="timed batch-1 calls of the teacher"
    )
    p.add_argument("--student-latency-iters", type=int, default=200)
    p.add_argument("--throughput-iters", type=int, default=5, help="timed batches of the teacher")
    p.add_argument("--student-throughput-iters", type=int, default=50)
    p.add_argument(
        "--n-medications", type=int, default=131, help="label space (MIMIC-III ATC-3: ~131)"
    )
    p.add_argument("--n-diagnoses", type=int, default=1958)
    p.add_argument("--n-procedures", type=int, default=1430)
    p.add_argument(
        "--visits", type=int, default=3, help="visits per synthetic patient (current included)"
    )
    p.add_argument(
        "--codes", type=int, default=14, help="codes per visit and type (about MIMIC-III's mean)"
    )
    p.add_argument(
        "--compile", action="store_true", help="also try torch.compile(mode='reduce-overhead')"
    )
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument(
        "--cpu-threads", type=int, default=2, help="threads of the CPU student run (0 = skip)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "data" / "08_reporting" / "gpu_efficiency.json"))
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- utils
def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, iters, device, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def figures(name, device, n_params, weight_bytes, lat, thr_times, batch):
    return {
        "model": name,
        "device": str(device),
        "n_parameters": int(n_params),
        "weight_bytes": int(weight_bytes),
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(lat, 95) * 1e3),
        "throughput": {
            "1": float(1.0 / np.median(lat)),
            str(batch): float(batch / np.median(thr_times)),
        },
        "peak_memory_bytes": {},
    }


def cuda_memory(fn, device):
    """(peak growth over the resident weights, total max allocated) of one call, in bytes."""
    import torch

    if not str(device).startswith("cuda"):
        return None, None
    sync(device)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated()
    return int(peak - before), int(peak)


def module_bytes(module):
    return int(
        sum(
            t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())
        )
    )


# --------------------------------------------------------------------------------------------- student
def synthetic_student_inputs(args, n):
    """A vocab with MIMIC-III-like sizes and ``n`` synthetic samples following the samples contract."""
    import pandas as pd

    rng = np.random.default_rng(args.seed)
    meds = [f"M{i:03d}" for i in range(args.n_medications)]
    diags = [f"D{i:04d}" for i in range(args.n_diagnoses)]
    procs = [f"P{i:04d}" for i in range(args.n_procedures)]
    profile = {
        "gender": ["unknown", "F", "M"],
        "insurance": ["unknown", "Medicare", "Private", "Medicaid", "Government", "Self Pay"],
        "language": ["unknown", "ENGL", "SPAN", "RUSS"],
        "marital_status": ["unknown", "MARRIED", "SINGLE", "WIDOWED", "DIVORCED"],
        "ethnicity": ["unknown", "WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN"],
        "admission_type": ["unknown", "EMERGENCY", "ELECTIVE", "URGENT"],
    }
    tokens = (
        ["[PAD]", "[CLS]", "[MASK]"]
        + [f"M_{m}" for m in meds]
        + [f"D_{d}" for d in diags]
        + [f"P_{p}" for p in procs]
    )
    vocab = {
        "medication": meds,
        "diagnosis": diags,
        "procedure": procs,
        "tokens": tokens,
        "profile": profile,
        "age_bins": [18, 30, 40, 50, 60, 70, 80, 90],
    }
    k = args.codes
    rows = []
    for i in range(n):
        v = args.visits
        dx = [sorted(rng.choice(diags, k, replace=False).tolist()) for _ in range(v)]
        px = [sorted(rng.choice(procs, max(1, k // 3), replace=False).tolist()) for _ in range(v)]
        rx = [sorted(rng.choice(meds, k, replace=False).tolist()) for _ in range(v)]
        rows.append(
            {
                "sample_id": f"{i}_{i}",
                "subject_id": i,
                "hadm_id": i,
                "n_past": v - 1,
                "diagnoses": dx,
                "procedures": px,
                "medications": rx[:-1],
                "target": rx[-1],
                "age": 65.0,
                **{f: vals[1] for f, vals in profile.items()},
            }
        )
    return vocab, pd.DataFrame(rows)


def build_student(args, teacher_hidden):
    from leader_kedro.student.model import LeaderStudent, StudentBundle, make_config

    vocab, samples = synthetic_student_inputs(args, max(args.batch, 1))
    cfg = make_config(vocab, {"teacher_hidden_size": teacher_hidden})
    module = LeaderStudent(cfg).eval()
    bundle = StudentBundle(module, cfg, vocab)
    return bundle, samples


def student_batches(bundle, samples, batch, device):
    from leader_kedro.student.model import collate

    enc = bundle.encode(samples)

    def to(b):
        return {k: v.to(device) for k, v in b.items()}

    return to(collate(enc, [0])), to(collate(enc, list(range(batch))))


def student_callable(module, batch, mode, device):
    """A zero-argument callable computing the probabilities of ``batch``: eager, CUDA graph or compiled."""
    import torch

    if mode == "eager":
        return lambda: torch.sigmoid(module(batch)["logits"])
    if mode == "cuda_graph":
        static = {k: v.clone() for k, v in batch.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                torch.sigmoid(module(static)["logits"])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.sigmoid(module(static)["logits"])

        def replay():
            graph.replay()
            return out

        return replay
    if mode == "compile":
        compiled = torch.compile(module, mode="reduce-overhead", dynamic=False)
        return lambda: torch.sigmoid(compiled(batch)["logits"])
    raise ValueError(mode)


def measure_student(args, bundle, samples, device):
    import torch

    module = bundle.module.to(device)
    b1, bN = student_batches(bundle, samples, args.batch, device)
    modes = ["eager"]
    if str(device).startswith("cuda") and not args.no_cuda_graph:
        modes.append("cuda_graph")
    if args.compile:
        modes.append("compile")
    results = {}
    with torch.inference_mode() if device == "cpu" else torch.no_grad():
        for mode in modes:
            try:
                f1 = student_callable(module, b1, mode, device)
                fN = student_callable(module, bN, mode, device)
                lat = timed(f1, args.student_latency_iters, device, warmup=5)
                thr = timed(fN, args.student_throughput_iters, device, warmup=5)
            except Exception as exc:  # a mode that cannot run here is reported, not fatal
                results[mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"student {mode}: skipped ({type(exc).__name__}: {exc})"[:300], flush=True)
                continue
            r = figures(
                "student", device, bundle.n_parameters, module_bytes(module), lat, thr, args.batch
            )
            for bs, f in (("1", f1), (str(args.batch), fN)):
                growth, total = cuda_memory(f, device)
                if growth is not None:
                    r["peak_memory_bytes"][bs] = growth
                    r.setdefault("max_allocated_bytes", {})[bs] = total
            r["mode"] = mode
            results[mode] = r
            print(
                f"student {mode} on {device}: p50 {r['latency_ms_p50']:.3f} ms, "
                f"{r['throughput'][str(args.batch)]:.0f} samples/s at batch {args.batch}",
                flush=True,
            )
    ok = {m: r for m, r in results.items() if "error" not in r}
    best = max(
        ok.values(),
        key=lambda r: r["throughput"]["1"] + r["throughput"][str(args.batch)] / args.batch,
    )
    best = dict(
        best,
        modes={
            m: (
                {k: r[k] for k in ("latency_ms_p50", "latency_ms_p95", "throughput")}
                if "error" not in r
                else r
            )
            for m, r in results.items()
        },
    )
    module.to("cpu")
    return best


# --------------------------------------------------------------------------------------------- teacher
def build_teacher(args, device):
    import torch
    from transformers import LlamaConfig, LlamaModel

    shape = LLAMA_TINY if args.tiny else LLAMA_7B
    cfg = LlamaConfig(**shape, max_position_embeddings=max(4096, args.seq_len), use_cache=False)
    dtype = torch.bfloat16 if str(device).startswith("cuda") or not args.tiny else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(args.seed)
            backbone = LlamaModel(cfg).eval()
            head = torch.nn.Linear(cfg.hidden_size, args.n_medications, bias=False)
    finally:
        torch.set_default_dtype(previous)
    return backbone, head, cfg, dtype


def measure_teacher(args, device):
    import torch

    t0 = time.perf_counter()
    backbone, head, cfg, dtype = build_teacher(args, device)
    sync(device)
    print(
        f"teacher built in {time.perf_counter() - t0:.1f} s ({'tiny' if args.tiny else 'LLaMA-7B shape'}, {dtype})",
        flush=True,
    )
    n_params = sum(p.numel() for p in backbone.parameters()) + sum(
        p.numel() for p in head.parameters()
    )
    weights = module_bytes(backbone) + module_bytes(head)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)

    def inputs(b):
        ids = torch.randint(3, cfg.vocab_size, (b, args.seq_len), generator=gen).to(device)
        return ids, torch.ones_like(ids)

    def forward(ids, mask):
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        # right padding, equal lengths: the last token (the EOS of the prompt)
        pooled = hidden[:, -1]
        return torch.sigmoid(head(pooled).float())

    ids1, m1 = inputs(1)
    idsN, mN = inputs(args.batch)
    with torch.inference_mode():
        lat = timed(lambda: forward(ids1, m1), args.latency_iters, device, warmup=2)
        thr = timed(lambda: forward(idsN, mN), args.throughput_iters, device, warmup=1)
        r = figures("teacher", device, n_params, weights, lat, thr, args.batch)
        for bs, (i, m) in (("1", (ids1, m1)), (str(args.batch), (idsN, mN))):
            growth, total = cuda_memory(lambda i=i, m=m: forward(i, m), device)
            if growth is not None:
                r["peak_memory_bytes"][bs] = growth
                r.setdefault("max_allocated_bytes", {})[bs] = total
    r["shape"] = (
        "tiny LLaMA"
        if args.tiny
        else "LLaMA-7B (4096 hidden, 32 layers, 32 heads, 11008 FFN, 32000 vocab)"
    )
    r["dtype"] = str(dtype).replace("torch.", "")
    r["mode"] = "eager, sdpa attention"
    print(
        f"teacher on {device}: p50 {r['latency_ms_p50']:.2f} ms, {r['throughput'][str(args.batch)]:.1f} samples/s at batch {args.batch}",
        flush=True,
    )
    return r, cfg.hidden_size


def main(argv=None):
    import torch

    args = parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda but no CUDA device is available (use --device cpu --tiny to smoke-test)"
        )
    t_start = time.perf_counter()
    teacher_hidden = LLAMA_TINY["hidden_size"] if args.tiny else LLAMA_7B["hidden_size"]

    # student first (so its peak memory is not measured on top of the teacher's weights)
    bundle, samples = build_student(args, teacher_hidden)
    student = measure_student(args, bundle, samples, device)
    student_cpu = None
    if args.cpu_threads and device != "cpu":
        from leader_kedro.torch_threads import torch_threads

        cpu_args = argparse.Namespace(**{**vars(args), "compile": False})
        with torch_threads(args.cpu_threads):
            student_cpu = measure_student(cpu_args, bundle, samples, "cpu")
        student_cpu["device"] = f"cpu ({args.cpu_threads} threads)"
    teacher, _ = measure_teacher(args, device)
    gc.collect()

    b = str(args.batch)

    def div(a, c):
        return float(a / c) if a and c else None

    def total(r, bs):
        return (r.get("max_allocated_bytes") or {}).get(bs) or (
            r["weight_bytes"] + (r["peak_memory_bytes"].get(bs) or 0)
        )

    ratios = {
        "throughput_b1": div(student["throughput"]["1"], teacher["throughput"]["1"]),
        f"throughput_b{b}": div(student["throughput"][b], teacher["throughput"][b]),
        "latency_p50": div(teacher["latency_ms_p50"], student["latency_ms_p50"]),
        f"peak_memory_total_b{b}": div(total(teacher, b), total(student, b)),
        "parameters": div(teacher["n_parameters"], student["n_parameters"]),
    }
    if student_cpu:
        ratios[f"cpu_student_vs_gpu_teacher_throughput_b{b}"] = div(
            student_cpu["throughput"][b], teacher["throughput"][b]
        )
        ratios["cpu_student_vs_gpu_teacher_throughput_b1"] = div(
            student_cpu["throughput"]["1"], teacher["throughput"]["1"]
        )
    targets = {
        "throughput_b1 >= 100x": (ratios["throughput_b1"] or 0) >= 100,
        f"throughput_b{b} >= 300x": (ratios[f"throughput_b{b}"] or 0) >= 300,
        "peak memory >= 300x less": (ratios[f"peak_memory_total_b{b}"] or 0) >= 300,
    }
    if student_cpu:
        targets["cpu student out-serves gpu teacher"] = (
            ratios[f"cpu_student_vs_gpu_teacher_throughput_b{b}"] or 0
        ) > 1
    result = {
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "tiny": args.tiny,
        "inputs": "pre-built on the device: token ids (teacher), collated id tensors (student)",
        "teacher": teacher,
        "student": student,
        "student_cpu": student_cpu,
        "ratios": ratios,
        "targets_met": targets,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps({"ratios": ratios, "targets_met": targets, "wall_s": result["wall_s"]}, indent=2)
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
