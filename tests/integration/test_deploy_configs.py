"""The scale-out configs cannot run here (no cluster): they are validated with Dagster's own
config schemas, the way the instance and executor validate them at start-up."""

from pathlib import Path

import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import ConfigurableClass, class_from_code_pointer

from mlops_assets.keys import LIFECYCLE_JOB, asset_key, scoped_name, step_key
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.torch_executor import k8s_gpu_tags
from tests.conftest import write_spec

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTANCE_SECTIONS = ("storage", "run_coordinator", "run_launcher", "compute_logs")
# What the {env: ...} sources of the instance files read; set only while validating.
INSTANCE_ENV = {
    "MLOPS_PG_HOST": "db.internal",
    "MLOPS_PG_PORT": "5432",
    "MLOPS_PG_USER": "dagster",
    "MLOPS_PG_PASSWORD": "not-a-real-password",
    "MLOPS_PG_DB": "dagster",
    "MLOPS_S3_BUCKET": "mlops-suite",
}


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)


def validate_class_config(section: dict) -> type[ConfigurableClass]:
    """Resolve `module`/`class` and check `config` against that class's config schema."""
    klass = class_from_code_pointer(section["module"], section["class"])
    result = process_config(resolve_to_config_type(klass.config_type()), section.get("config", {}))
    assert result.success, f"{section['class']}: {[e.message for e in result.errors]}"
    return klass


@pytest.mark.parametrize(
    ("folder", "launcher"),
    [("production", None), ("k8s", "K8sRunLauncher"), ("ecs", "EcsRunLauncher")],
)
def test_instance_config_validates(folder: str, launcher: str | None, instance_env: None) -> None:
    config = dagster_instance_config(str(DEPLOY / folder))[0]
    classes = {}
    for name in INSTANCE_SECTIONS:
        section = config.get(name)
        if not section:
            continue
        if name == "storage":  # storage: {postgres: {...}} is the short form for one class
            from dagster_postgres import DagsterPostgresStorage

            result = process_config(
                resolve_to_config_type(DagsterPostgresStorage.config_type()), section["postgres"]
            )
            assert result.success, [e.message for e in result.errors]
            classes[name] = DagsterPostgresStorage
        else:
            classes[name] = validate_class_config(section)
    assert classes["storage"].__name__ == "DagsterPostgresStorage"
    if launcher:
        assert classes["run_launcher"].__name__ == launcher
        assert classes["compute_logs"].__name__ == "S3ComputeLogManager"
    text = (DEPLOY / folder / "dagster.yaml").read_text()
    assert INSTANCE_ENV["MLOPS_PG_PASSWORD"] not in text and "password: {env:" in text


def test_k8s_definitions_use_the_k8s_job_executor_with_per_asset_requests() -> None:
    import runpy

    from dagster_k8s import k8s_job_executor

    executor_config = yaml.safe_load((DEPLOY / "k8s" / "executor.yaml").read_text())
    schema = resolve_to_config_type(k8s_job_executor.config_schema.as_field().config_type)
    result = process_config(schema, executor_config)
    assert result.success, [e.message for e in result.errors]

    module = runpy.run_path(str(DEPLOY / "k8s" / "definitions.py"))
    defs = module["defs"]
    per_asset = executor_config["per_step_k8s_config"]
    # executor.yaml names assets; each entry applies to that asset's step in every pipeline
    applied = module["executor_config"](executor_config, module["suite"])["per_step_k8s_config"]
    pipelines = {key.path[0] for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert pipelines == {"loan_default", "loan_default_linear"}  # the repo's defs/
    assert set(applied) == {step_key(p, asset) for p in pipelines for asset in per_asset}
    for pipeline in pipelines:
        job = defs.resolve_job_def(scoped_name(pipeline, LIFECYCLE_JOB))
        assert job.executor_def.name == k8s_job_executor.name
        nodes = {node.name for node in job.graph.nodes}
        mine = {step for step in applied if step.startswith(f"{pipeline}__")}
        assert mine <= nodes, f"per-step config for unknown steps: {mine - nodes}"
    training = applied[step_key("loan_default", "candidate_model")]
    assert training["container_config"]["resources"]["requests"]["memory"] == "16Gi"


def test_training_asset_requests_a_gpu_when_the_model_is_torch(tmp_path: Path) -> None:
    """Read the tags the way dagster-k8s does when it builds the step's pod."""
    from dagster_k8s.job import get_user_defined_k8s_config

    def training_limits(kind: str) -> dict:
        spec = load_spec(write_spec(tmp_path / f"{kind}.yaml", model={"kind": kind}))
        tags = (
            build_definitions(spec).resolve_assets_def(asset_key(spec, "candidate_model")).op.tags
        )
        resources = get_user_defined_k8s_config(tags).container_config.get("resources", {})
        return resources.get("limits", {})

    expected = k8s_gpu_tags()["dagster-k8s/config"]["container_config"]["resources"]["limits"]
    assert training_limits("torch_mlp").get("nvidia.com/gpu") == expected["nvidia.com/gpu"], (
        "candidate_model of a torch_mlp model asks Kubernetes for no GPU"
    )
    assert "nvidia.com/gpu" not in training_limits("hist_gradient_boosting")
