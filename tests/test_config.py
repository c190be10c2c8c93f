"""Every stage's typed config: its defaults are conf/base's values, and bad keys name their path."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from leader_kedro.config import as_dict, build_config
from leader_kedro.contracts import IngestInputError, ParameterError
from leader_kedro.evaluation.protocols import EvaluateConfig
from leader_kedro.ingest.cohort import IngestConfig
from leader_kedro.student.scoring import ScoreConfig
from leader_kedro.student.training import DistillConfig
from leader_kedro.synthetic.generator import SyntheticConfig
from leader_kedro.teacher.features import FeaturesConfig
from leader_kedro.teacher.prompts import PromptConfig
from leader_kedro.teacher.training import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]

# paths resolved against the project root on each machine: not a fixed default
MACHINE_PATHS = {
    "teacher": {"checkpoint_dir"},
    "evaluate": {"report": {"gpu_results"}},
    "score": {"input"},
}


def _env_parameters(env: str) -> dict:
    loader = OmegaConfigLoader(
        str(ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        custom_resolvers={"project_root": lambda: str(ROOT)},
    )
    return loader["parameters"]


def _base_parameters() -> dict:
    return _env_parameters("base")


def _drop(tree: dict, paths) -> dict:
    out = dict(tree)
    for key in paths:
        if isinstance(paths, dict) and isinstance(paths[key], (set, dict)):
            out[key] = _drop(out[key], paths[key])
        else:
            out.pop(key, None)
    return out


@pytest.mark.parametrize(
    "stage, cls",
    [
        ("distill", DistillConfig),
        ("evaluate", EvaluateConfig),
        ("features", FeaturesConfig),
        ("prompts", PromptConfig),
        ("score", ScoreConfig),
        ("synthetic", SyntheticConfig),
        ("teacher", TeacherConfig),
    ],
)
def test_dataclass_defaults_are_the_base_yml(stage, cls):
    params = _base_parameters()
    from_yml = as_dict(build_config(cls, params[stage], stage))
    defaults = as_dict(cls())
    paths = MACHINE_PATHS.get(stage, set())
    assert _drop(from_yml, paths) == _drop(defaults, paths)


def test_ingest_defaults_are_the_base_yml():
    params = _base_parameters()
    from_yml = IngestConfig.from_dict(params["ingest"], seed=params["seed"])
    # the yml sets the split seed to the global seed; the dataclass leaves it null (= global seed)
    defaults = IngestConfig.from_dict({"split": {"seed": params["seed"]}}, seed=params["seed"])
    assert as_dict(from_yml) == as_dict(defaults)


def test_unknown_and_mistyped_parameters_name_their_path():
    with pytest.raises(ParameterError, match=r"distill\.training\.learning_rate"):
        build_config(DistillConfig, {"training": {"learning_rate": 0.1}}, "distill")
    with pytest.raises(ParameterError, match=r"distill\.training\.batch_size must be an integer"):
        build_config(DistillConfig, {"training": {"batch_size": "16"}}, "distill")
    with pytest.raises(ParameterError, match=r"evaluate\.protocols\.leader\.rounds"):
        build_config(EvaluateConfig, {"protocols": {"leader": {"rounds": 2.5}}}, "evaluate")
    with pytest.raises(IngestInputError, match=r"ingest\.top_k_medications"):
        IngestConfig.from_dict({"top_k_medications": "many"}, seed=1)


def test_configs_are_frozen():
    cfg = build_config(DistillConfig, {}, "distill")
    with pytest.raises(AttributeError):
        cfg.threshold = 0.5  # type: ignore[misc]


ENVS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "base")


@pytest.mark.parametrize("env", ENVS)
def test_every_environment_builds_valid_stage_configs(env):
    """`kedro run --env <env>` merges the env's keys over base: the result must still be a valid
    typed config for every stage (a typo in conf/study would otherwise surface an hour in)."""
    params = _env_parameters(env)
    for stage, cls in (
        ("distill", DistillConfig),
        ("evaluate", EvaluateConfig),
        ("features", FeaturesConfig),
        ("prompts", PromptConfig),
        ("teacher", TeacherConfig),
    ):
        build_config(cls, params[stage], stage)
    IngestConfig.from_dict(params["ingest"], seed=params["seed"])


def test_the_study_environment_sizes():
    """conf/study: the powered cohort, the teacher's subsample and the students' seeds."""
    params = _env_parameters("study")
    teacher = build_config(TeacherConfig, params["teacher"], "teacher")
    distill = build_config(DistillConfig, params["distill"], "distill")
    assert params["synthetic"]["n_patients"] == 17000
    assert (
        teacher.max_train_samples == 9000 and teacher.early_stopping_patience < teacher.num_epochs
    )
    assert distill.training.n_seeds >= 5 and distill.ablations
