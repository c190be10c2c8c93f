"""The ingest stage end to end, without Kedro: locate -> read -> map -> visits -> vocab/DDI -> samples.

The Kedro nodes (pipelines/ingest/nodes.py) and the benchmark (bench.py) both call these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leader_kedro.config import as_dict
from leader_kedro.contracts import IngestInputError, predictions_frame
from leader_kedro.ingest import readers as mimic
from leader_kedro.ingest.cohort import (
    IngestConfig,
    build_code_names,
    build_ddi_adjacency,
    build_visits,
    build_vocab,
    cohort_stats,
    shared_name_counts,
)
from leader_kedro.ingest.meter import StageMeter
from leader_kedro.ingest.samples import build_samples, sample_stats, split_patients
from leader_kedro.synthetic.generator import ORACLE_NAME, read_oracle

DDI_SOURCES = ("atc3_pairs", "twosides", "none")


def ingest_config(ingest: Mapping | IngestConfig | None, seed: int) -> IngestConfig:
    """The typed ``ingest`` config (built once per node); ``seed`` is the global seed."""
    return IngestConfig.from_dict(ingest, seed=seed)


def effective_params(cfg: IngestConfig) -> dict:
    """The ingest parameters actually used, every default filled in (for the report)."""
    out = as_dict(cfg)
    out["split"]["seed"] = cfg.split_seed
    return out


def needed_aux(cfg: IngestConfig) -> dict[str, str]:
    """Which aux files this configuration reads (key -> file name)."""
    names = as_dict(cfg.aux_files)
    routes, ddi = list(cfg.mapping_routes), cfg.ddi_source
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


def locate_inputs(source: str, raw_dir: str, aux_dir: str, cfg: IngestConfig) -> dict:
    """Check that every input exists before anything heavy runs; returns the manifest of paths."""
    mimic.check_source(source)
    tables = mimic.locate_tables(raw_dir, source)
    aux = {k: str(mimic.find_aux(aux_dir, name, k)) for k, name in needed_aux(cfg).items()}
    oracle = Path(raw_dir) / ORACLE_NAME
    return {
        "source": source,
        "raw_dir": str(raw_dir),
        "aux_dir": str(aux_dir),
        "tables": tables,
        "aux_files": aux,
        # what the synthetic generator knows (its true label probabilities); real data has none
        "oracle": str(oracle) if source == "synthetic" and oracle.is_file() else None,
    }


def load_aux(aux_paths: dict[str, str], cfg: IngestConfig) -> tuple[dict, dict]:
    """Read the aux files named in the manifest; returns (aux tables, their stats)."""
    aux: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    if "ndc2rxnorm" in aux_paths:
        aux["ndc2rxnorm"] = mimic.read_ndc2rxnorm(aux_paths["ndc2rxnorm"])
        stats["ndc2rxnorm_entries"] = int(len(aux["ndc2rxnorm"]))
    if "rxcui2atc4" in aux_paths:
        aux["rxcui2atc4"], s = mimic.read_rxcui2atc4(aux_paths["rxcui2atc4"], cfg.atc4_choice)
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
            cfg.ddi_twosides_topk,
        )
        aux["ddi_pairs"] = pairs
        stats["ddi"] = {"source": "twosides", **s}
    else:
        aux["ddi_pairs"] = None
        stats["ddi"] = {"source": "none"}
    return aux, stats


def build_cohort(manifest: dict, p: IngestConfig, meter: StageMeter | None = None) -> dict:
    """Manifest -> visits, vocab, code_names, ddi_adjacency and the cohort part of the report.

    ``meter`` times the stages read, map, visits and vocab (wall time, peak memory)."""
    meter = meter or StageMeter(log=False)
    with meter.stage("read"):
        raw = mimic.read_raw_tables(manifest["tables"], manifest["source"])
        aux, aux_stats = load_aux(manifest["aux_files"], p)
    tables = raw.tables
    visits, stats = build_visits(tables, aux, p, manifest["source"], meter)
    with meter.stage("vocab"):
        vocab = build_vocab(visits, list(p.age_bins))
        code_names, missing_names = build_code_names(vocab, tables, aux["atc_names"], p.icd_title)
        ddi = build_ddi_adjacency(vocab["medication"], aux["ddi_pairs"])
        stats["mapping"]["aux"] = aux_stats
        stats["mapping"]["codes_without_name"] = missing_names
        stats["mapping"]["codes_sharing_a_name"] = shared_name_counts(code_names)
        stats["mapping"]["diagnosis_codes_with_name"] = _cover(
            vocab["diagnosis"], missing_names["diagnosis"]
        )
        stats["mapping"]["procedure_codes_with_name"] = _cover(
            vocab["procedure"], missing_names["procedure"]
        )
        report = {
            "source": manifest["source"],
            "rows_read": raw.rows_read,
            "file_formats": raw.formats,
            "mapping": stats.pop("mapping"),
            "dropped": {
                "rows": {**raw.dropped, **stats.pop("rows_dropped")},
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


def make_splits(visits: pd.DataFrame, cfg: IngestConfig, meter: StageMeter | None = None) -> dict:
    """visits -> samples_{train,val,test}, split_ids and the samples part of the report.

    ``meter`` times the stages split and samples."""
    meter = meter or StageMeter(log=False)
    with meter.stage("split"):
        split_ids = split_patients(
            visits["subject_id"].unique(),
            method=cfg.split.method,
            ratios=list(cfg.split.ratios),
            seed=cfg.split_seed,
        )
    train_p, eval_p = cfg.sample_protocol, cfg.eval_sample_protocol
    with meter.stage("samples"):
        samples = build_samples(visits, split_ids, train_p, eval_p)
        protocols = {"train": train_p, "val": eval_p, "test": eval_p}
        report = sample_stats(samples, protocols)
    return {"samples": samples, "split_ids": split_ids, "report": report}


def oracle_predictions(manifest: Mapping, samples: pd.DataFrame, vocab: Mapping) -> pd.DataFrame:
    """The synthetic generator's true label probabilities of ``samples`` as a predictions table
    (``sample_id`` + one column per ``vocab["medication"]``): the ceiling of the evaluation.

    Only the synthetic source knows them. For real MIMIC the table has the contract's columns and
    no row, and the evaluation leaves the oracle out.
    """
    meds = list(vocab["medication"])
    path = manifest.get("oracle")
    if manifest.get("source") != "synthetic" or not path:
        return predictions_frame([], np.zeros((0, len(meds))), meds)
    prob = read_oracle(path, samples["hadm_id"].to_numpy(), meds)
    return predictions_frame(samples["sample_id"].tolist(), prob, meds)


def run_ingest(
    source: str,
    raw_dir: str | Path,
    aux_dir: str | Path,
    ingest: dict,
    seed: int,
    meter: StageMeter | None = None,
) -> dict:
    """Everything in one call (benchmark, notebooks): returns the outputs and the full report."""
    meter = meter or StageMeter(log=False)
    cfg = ingest_config(ingest, seed)
    manifest = locate_inputs(source, str(raw_dir), str(aux_dir), cfg)
    cohort = build_cohort(manifest, cfg, meter)
    splits = make_splits(cohort["visits"], cfg, meter)
    report = {
        **cohort["report"],
        "samples": splits["report"],
        "parameters": {"ingest": effective_params(cfg), "seed": seed},
    }
    with meter.stage("oracle"):
        oracle = {
            split: oracle_predictions(manifest, splits["samples"][split], cohort["vocab"])
            for split in ("val", "test")
        }
    return {**cohort, **splits, "oracle": oracle, "report": report, "manifest": manifest}
