"""The ingest stage end to end, without Kedro: locate -> read -> map -> visits -> vocab/DDI -> samples.

The Kedro nodes (pipelines/ingest/nodes.py) and the benchmark (bench.py) both call these functions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from leader_kedro import mimic
from leader_kedro.cohort import (
    IngestParams,
    build_code_names,
    build_ddi_adjacency,
    build_visits,
    build_vocab,
    cohort_stats,
)
from leader_kedro.cohort_samples import build_samples, sample_stats, split_patients
from leader_kedro.contracts import IngestInputError

# Public file names of the auxiliary inputs (each overridable: ingest.aux_files.<key>).
DEFAULT_AUX_FILES = {
    "ndc2rxnorm": "ndc2rxnorm_mapping.txt",
    "rxcui2atc4": "RXCUI2atc4.csv",
    "ndc2atc3": None,
    "atc_names": "WHO ATC-DDD 2021-12-03.csv",
    "ddi_pairs_atc3": "ddi_pairs_atc3.csv",
    "twosides": "drug-DDI.csv",
    "drug_atc": "drug-atc.csv",
}
DDI_SOURCES = ("atc3_pairs", "twosides", "none")
# ingest keys read here rather than by cohort.IngestParams, with their defaults
OTHER_DEFAULTS = {
    "atc4_choice": "first_sorted",
    "ddi_source": "atc3_pairs",
    "ddi_twosides_topk": 40,
    "sample_protocol": "last_visit",
    "eval_sample_protocol": "last_visit",
    "split": {"method": "random", "ratios": [0.8, 0.1, 0.1], "seed": None},
}


def effective_params(ingest: dict, seed: int) -> dict:
    """The ingest parameters actually used: the given ones over every default (for the report)."""
    from dataclasses import asdict

    out = {**asdict(IngestParams.from_dict(ingest, seed=seed)), **OTHER_DEFAULTS, **ingest}
    out["aux_files"] = aux_file_names(ingest)
    out["split"] = {**OTHER_DEFAULTS["split"], **(ingest.get("split") or {})}
    if out["split"]["seed"] is None:
        out["split"]["seed"] = seed
    return out


def aux_file_names(ingest: dict) -> dict:
    return {**DEFAULT_AUX_FILES, **(ingest.get("aux_files") or {})}


def needed_aux(ingest: dict) -> dict[str, str]:
    """Which aux files this configuration reads (key -> file name)."""
    names = aux_file_names(ingest)
    routes = ingest.get("mapping_routes", ["rxnorm", "direct"])
    ddi = ingest.get("ddi_source", "atc3_pairs")
    if ddi not in DDI_SOURCES:
        raise IngestInputError(
            f"Invalid parameter `ingest.ddi_source`: {ddi!r}; expected one of {DDI_SOURCES}."
        )
    keys = ["atc_names"]
    if "rxnorm" in routes:
        keys += ["ndc2rxnorm", "rxcui2atc4"]
    if "direct" in routes and names.get("ndc2atc3"):
        keys.append("ndc2atc3")
    keys += {"atc3_pairs": ["ddi_pairs_atc3"], "twosides": ["twosides", "drug_atc"], "none": []}[
        ddi
    ]
    out = {}
    for key in keys:
        if not names.get(key):
            raise IngestInputError(
                f"Parameter `ingest.aux_files.{key}` is empty but this configuration needs it "
                f"(mapping_routes={routes}, ddi_source={ddi}); expected a file name."
            )
        out[key] = names[key]
    return out


def locate_inputs(source: str, raw_dir: str, aux_dir: str, ingest: dict) -> dict:
    """Check that every input exists before anything heavy runs; returns the manifest of paths."""
    mimic.check_source(source)
    tables = mimic.locate_tables(raw_dir, source)
    aux = {k: str(mimic.find_aux(aux_dir, name, k)) for k, name in needed_aux(ingest).items()}
    return {
        "source": source,
        "raw_dir": str(raw_dir),
        "aux_dir": str(aux_dir),
        "tables": tables,
        "aux_files": aux,
    }


def load_aux(aux_paths: dict[str, str], ingest: dict) -> tuple[dict, dict]:
    """Read the aux files named in the manifest; returns (aux tables, their stats)."""
    aux, stats = {}, {}
    if "ndc2rxnorm" in aux_paths:
        aux["ndc2rxnorm"] = mimic.read_ndc2rxnorm(aux_paths["ndc2rxnorm"])
        stats["ndc2rxnorm_entries"] = int(len(aux["ndc2rxnorm"]))
    if "rxcui2atc4" in aux_paths:
        aux["rxcui2atc4"], s = mimic.read_rxcui2atc4(
            aux_paths["rxcui2atc4"], ingest.get("atc4_choice", "first_sorted")
        )
        stats.update(s)
    if "ndc2atc3" in aux_paths:
        aux["ndc2atc3"], s = mimic.read_ndc2atc3(aux_paths["ndc2atc3"])
        stats.update(s)
    aux["atc_names"] = mimic.read_atc_names(aux_paths["atc_names"])
    if "ddi_pairs_atc3" in aux_paths:
        aux["ddi_pairs"] = mimic.read_ddi_pairs_atc3(aux_paths["ddi_pairs_atc3"])
        stats["ddi"] = {"source": "atc3_pairs", "atc3_pairs": int(len(aux["ddi_pairs"]))}
    elif "twosides" in aux_paths:
        pairs, s = mimic.twosides_to_atc3_pairs(
            mimic.read_twosides(aux_paths["twosides"]),
            mimic.read_drug_atc(aux_paths["drug_atc"]),
            int(ingest.get("ddi_twosides_topk", 40)),
        )
        aux["ddi_pairs"] = pairs
        stats["ddi"] = {"source": "twosides", **s}
    else:
        aux["ddi_pairs"] = None
        stats["ddi"] = {"source": "none"}
    return aux, stats


def build_cohort(manifest: dict, ingest: dict, seed: int) -> dict:
    """Manifest -> visits, vocab, code_names, ddi_adjacency and the cohort part of the report."""
    p = IngestParams.from_dict(ingest, seed=seed)
    tables, rows_read = mimic.read_raw_tables(manifest["tables"], manifest["source"])
    aux, aux_stats = load_aux(manifest["aux_files"], ingest)
    visits, stats = build_visits(tables, aux, p)
    vocab = build_vocab(visits, p.age_bins)
    code_names, missing_names = build_code_names(vocab, tables, aux["atc_names"], p.icd_title)
    ddi = build_ddi_adjacency(vocab["medication"], aux["ddi_pairs"])
    stats["mapping"]["aux"] = aux_stats
    stats["mapping"]["codes_without_name"] = missing_names
    stats["mapping"]["diagnosis_codes_with_name"] = _cover(
        vocab["diagnosis"], missing_names["diagnosis"]
    )
    stats["mapping"]["procedure_codes_with_name"] = _cover(
        vocab["procedure"], missing_names["procedure"]
    )
    report = {
        "source": manifest["source"],
        "rows_read": rows_read,
        "mapping": stats.pop("mapping"),
        "dropped": {
            "rows": stats.pop("rows_dropped"),
            "visits": stats.pop("visits_dropped"),
            "patients": stats.pop("patients_dropped"),
        },
        "cohort": {**cohort_stats(visits, vocab, ddi), **stats},
    }
    return {
        "visits": visits,
        "vocab": vocab,
        "code_names": code_names,
        "ddi_adjacency": ddi,
        "report": report,
    }


def _cover(codes: list, n_missing: int) -> float:
    return round(1 - n_missing / len(codes), 4) if codes else 0.0


def make_splits(visits: pd.DataFrame, ingest: dict, seed: int) -> dict:
    """visits -> samples_{train,val,test}, split_ids and the samples part of the report."""
    split = ingest.get("split") or {}
    split_ids = split_patients(
        visits["subject_id"].unique(),
        method=split.get("method", "random"),
        ratios=split.get("ratios", [0.8, 0.1, 0.1]),
        seed=int(split.get("seed", seed) if split.get("seed") is not None else seed),
    )
    train_p = ingest.get("sample_protocol", "last_visit")
    eval_p = ingest.get("eval_sample_protocol", "last_visit")
    samples = build_samples(visits, split_ids, train_p, eval_p)
    protocols = {"train": train_p, "val": eval_p, "test": eval_p}
    return {
        "samples": samples,
        "split_ids": split_ids,
        "report": sample_stats(samples, protocols),
    }


def run_ingest(
    source: str, raw_dir: str | Path, aux_dir: str | Path, ingest: dict, seed: int
) -> dict:
    """Everything in one call (benchmark, notebooks): returns the outputs and the full report."""
    manifest = locate_inputs(source, str(raw_dir), str(aux_dir), ingest)
    cohort = build_cohort(manifest, ingest, seed)
    splits = make_splits(cohort["visits"], ingest, seed)
    report = {
        **cohort["report"],
        "samples": splits["report"],
        "parameters": {"ingest": effective_params(ingest, seed), "seed": seed},
    }
    return {**cohort, **splits, "report": report, "manifest": manifest}
