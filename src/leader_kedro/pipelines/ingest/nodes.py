"""Thin ingest nodes: unpack parameters, call the core (ingest_core / synthetic), return tables and dicts."""

from __future__ import annotations

import json
import logging

import pandas as pd

logger = logging.getLogger(__name__)


def prepare_raw(
    source: str, raw_dir: str, aux_dir: str, synthetic: dict, ingest: dict, seed: int
) -> dict:
    """Write the synthetic cohort when ``source: synthetic``, then check that every input exists."""
    from leader_kedro.ingest import readers as mimic
    from leader_kedro.ingest import stage as ingest_core
    from leader_kedro.ingest.meter import StageMeter

    mimic.check_source(source)
    written = None
    if source == "synthetic":
        from leader_kedro.synthetic import generator as synth

        scfg = synth.synthetic_config(synthetic)
        with StageMeter().stage("generate"):
            written = synth.write_cohort(raw_dir, aux_dir, scfg.n_patients, scfg.seed, scfg)
    cfg = ingest_core.ingest_config(ingest, seed)
    manifest = ingest_core.locate_inputs(source, raw_dir, aux_dir, cfg)
    manifest["synthetic"] = written
    return json.loads(
        json.dumps(manifest, default=str)
    )  # paths -> str: the manifest is a JSON file


def build_cohort(raw_manifest: dict, ingest: dict, seed: int):
    """Raw tables -> visits, vocab, code_names, ddi_adjacency (+ the cohort part of the report).

    Logs the wall time and peak memory of the stages read, map, visits and vocab."""
    from leader_kedro.ingest import stage as ingest_core
    from leader_kedro.ingest.meter import StageMeter

    cfg = ingest_core.ingest_config(ingest, seed)
    out = ingest_core.build_cohort(raw_manifest, cfg, StageMeter())
    return out["visits"], out["vocab"], out["code_names"], out["ddi_adjacency"], out["report"]


def make_splits(visits: pd.DataFrame, ingest: dict, seed: int):
    """visits -> samples_{train,val,test}, split_ids (+ the samples part of the report).

    Logs the wall time and peak memory of the stages split and samples."""
    from leader_kedro.ingest import stage as ingest_core
    from leader_kedro.ingest.meter import StageMeter

    out = ingest_core.make_splits(visits, ingest_core.ingest_config(ingest, seed), StageMeter())
    s = out["samples"]
    return s["train"], s["val"], s["test"], out["split_ids"], out["report"]


def oracle_predictions(
    raw_manifest: dict, samples_val: pd.DataFrame, samples_test: pd.DataFrame, vocab: dict
):
    """The synthetic generator's true probabilities for val and test (no rows for real MIMIC)."""
    from leader_kedro.ingest import stage as ingest_core
    from leader_kedro.ingest.meter import StageMeter

    with StageMeter().stage("oracle"):
        val, test = (
            ingest_core.oracle_predictions(raw_manifest, s, vocab)
            for s in (samples_val, samples_test)
        )
    if val.empty and len(samples_val):
        logger.info("no oracle for source %s: the evaluation leaves it out", raw_manifest["source"])
    return val, test


def write_ingest_report(
    raw_manifest: dict, cohort_report: dict, samples_report: dict, ingest: dict, seed: int
) -> dict:
    """Assemble ``ingest_report`` and log it (and the headline figures) to MLflow when a run is open."""
    from leader_kedro import tracking
    from leader_kedro.ingest import stage as ingest_core

    report = {
        **cohort_report,
        "samples": samples_report,
        "inputs": {"tables": raw_manifest["tables"], "aux_files": raw_manifest["aux_files"]},
        "parameters": {
            "ingest": ingest_core.effective_params(ingest_core.ingest_config(ingest, seed)),
            "seed": int(seed),
            "synthetic": raw_manifest.get("synthetic"),
        },
    }
    cohort = report["cohort"]
    headline = {
        k: v for k, v in cohort.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    headline.update({f"{split}_samples": v["samples"] for split, v in samples_report.items()})
    headline["ndc_coverage"] = report["mapping"]["ndc_coverage"]
    headline["row_coverage"] = report["mapping"]["row_coverage"]
    tracking.log_metrics(headline, prefix="ingest.")
    tracking.log_dict(report, "ingest/ingest_report.json")
    logger.info(
        "ingest (%s): %d patients, %d visits, %d meds, single-visit share %.3f, NDC coverage %.3f",
        report["source"],
        cohort["patients"],
        cohort["visits"],
        cohort["n_medications"],
        cohort["single_visit_share"],
        report["mapping"]["ndc_coverage"],
    )
    return report
