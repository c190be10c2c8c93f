"""The registered pyfunc ``leader-student``: a real sqlite MLflow store, loaded back in a fresh process."""

import json
import subprocess
import sys
import textwrap

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tiny_cohort import make_tiny_cohort  # noqa: E402

from leader_kedro.pipelines.distill.nodes import register_student  # noqa: E402
from leader_kedro.student.serving import LeaderStudentPyfunc, records_to_samples  # noqa: E402
from leader_kedro.student.training import train_student  # noqa: E402

PARAMS = {
    "model": {"hidden_size": 16, "n_heads": 2, "intermediate_size": 32},
    "kd": {"enabled": False},
    "align": {"enabled": True, "beta": 0.005, "tau": 0.1},
    "training": {"max_epochs": 1, "batch_size": 16, "seed": 3, "progress": False},
    "registry": {
        "enabled": True,
        "model_name": "leader-student",
        "artifact_name": "leader_student",
        "top_k": 4,
    },
}
NEW_PATIENT = {
    "diagnoses": [["4019", "42731"]],
    "procedures": [["3893"]],
    "medications": [],
    "gender": "F",
    "age": 70.0,
    "insurance": "Medicare",
    "language": "ENGL",
    "marital_status": "MARRIED",
    "ethnicity": "WHITE",
    "admission_type": "EMERGENCY",
    "top_k": 3,
}


@pytest.fixture(scope="module")
def trained():
    cohort = make_tiny_cohort(60, seed=2)
    bundle, _ = train_student(
        cohort["samples_train"],
        cohort["samples_val"],
        cohort["vocab"],
        PARAMS,
        None,
        cohort["code_names"],
    )
    return cohort, bundle


def test_pyfunc_predict_ranks_codes_with_names(trained):
    cohort, bundle = trained
    model = LeaderStudentPyfunc(top_k=4)
    model.bundle = bundle
    other = dict(
        NEW_PATIENT,
        diagnoses=[["486"], ["5849"]],
        procedures=[["966"], ["9604"]],
        medications=[["J01D"]],
    )
    other.pop("top_k")
    out = model.predict(None, pd.DataFrame([NEW_PATIENT, other]))
    assert list(out.columns) == ["row", "rank", "atc3", "name", "probability"]
    assert out["row"].tolist() == [0] * 3 + [1] * 4  # per-row top_k, default from the model
    for _, group in out.groupby("row"):
        assert group["rank"].tolist() == list(range(1, len(group) + 1))
        assert group["probability"].is_monotonic_decreasing
    assert out["atc3"].isin(cohort["vocab"]["medication"]).all()
    names = cohort["code_names"]["medication"]
    assert (out["name"] == out["atc3"].map(names)).all()
    probs = bundle.predict_proba(records_to_samples(pd.DataFrame([NEW_PATIENT])))[0]
    assert out.loc[0, "probability"] == pytest.approx(float(probs.max()), abs=1e-6)


def test_pyfunc_rejects_inconsistent_histories(trained):
    _, bundle = trained
    model = LeaderStudentPyfunc()
    model.bundle = bundle
    with pytest.raises(ValueError, match="past visits only"):
        model.predict(None, pd.DataFrame([dict(NEW_PATIENT, medications=[["A02B"]])]))
    with pytest.raises(ValueError, match="diagnoses"):
        model.predict(None, pd.DataFrame([{"procedures": [["3893"]], "medications": []}]))


def test_register_without_run_is_reported_not_raised(trained):
    cohort, bundle = trained
    assert mlflow.active_run() is None
    out = register_student(bundle, cohort["samples_val"], cohort["ddi_adjacency"], {}, PARAMS)
    assert out["registered"] is False and "MLflow run" in out["reason"]


def test_registered_model_loads_in_a_fresh_process_and_scores_a_new_patient(trained, tmp_path):
    cohort, bundle = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("leader_test", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=exp):
            info = register_student(
                bundle,
                cohort["samples_val"],
                cohort["ddi_adjacency"],
                {"training": {"student": {"best_val_prauc": 0.5}}},
                PARAMS,
            )
    finally:
        mlflow.set_tracking_uri(previous)
    assert info["registered"] is True and info["registered_model_version"] == 1
    assert info["champion"] is True  # the first version: there was no champion
    assert "Array(Array(string))" in info["signature"]

    script = textwrap.dedent(
        f"""
        import json, mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/leader-student@champion")
        out = model.predict([json.loads({json.dumps(json.dumps(NEW_PATIENT))})])
        print("RESULT" + json.dumps([r.model_dump() for r in out[0].recommendations]))
        bare = model.predict([{{"diagnoses": [["4019"]], "procedures": [["3893"]], "medications": []}}])
        print("BARE", len(bare[0].recommendations))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    rows = json.loads(line[len("RESULT") :])
    assert "BARE 4" in proc.stdout  # profile fields and top_k are optional in the signature
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["atc3"] in cohort["vocab"]["medication"] for r in rows)
    assert all(0.0 <= r["probability"] <= 1.0 for r in rows)
    # same numbers as the in-process student
    expected = bundle.predict_proba(records_to_samples(pd.DataFrame([NEW_PATIENT])))[0]
    assert rows[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
