"""The TabularMLPipeline component: attributes (schema, templates, relative paths, errors), the
scaffolder, the repo's own dg project (`dg check defs`, `dg list defs`) and two pipelines side
by side in one code location, each with its own keys, jobs, sensors and champion.

The end-to-end test of a fresh user project (new venv, `dg scaffold defs`, `dg launch`) is
tests/integration/test_user_project.py."""

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from dagster import AssetMaterialization, Definitions, build_sensor_context, instance_for_test
from dagster.components.testing import create_defs_folder_sandbox

from mlops_assets.cli import choose_spec
from mlops_assets.component import TabularMLPipeline
from mlops_assets.demo_data import DEMO_START, write_demo_data
from mlops_assets.keys import (
    DRIFT_SENSOR,
    INGEST_JOB,
    LIFECYCLE_JOB,
    NEW_DATA_SENSOR,
    asset_key,
    scoped_name,
)
from mlops_assets.spec import DEMO_SPEC_PATH, SpecError, load_spec
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.profiles import profile_resources

ROOT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).parent / "dg")
TYPE = "mlops_assets.TabularMLPipeline"


def demo_attributes(**overrides: object) -> dict:
    """The bundled demo spec as defs.yaml attributes, with `overrides` (whole sections)."""
    return {**yaml.safe_load(DEMO_SPEC_PATH.read_text()), **overrides}


def linear_attributes(source: str) -> dict:
    """A second, different pipeline on the same loans: another name, model kind, features,
    window policy and gate."""
    return {
        "name": "loan_linear",
        "source": {"path": source},
        "entity_key": "customer_id",
        "timestamp": "event_timestamp",
        "label": "defaulted",
        "task": "binary_classification",
        "classes": ["0", "1"],
        "allow_extra_columns": True,
        "partitions": {"start": "2024-01-01", "end": "2024-03-16"},
        "features": [
            {"name": "income", "type": "numeric", "min": 0},
            {"name": "credit_score", "type": "numeric", "min": 300, "max": 850},
            {"name": "debt_to_income", "type": "numeric", "min": 0, "max": 2},
            {"name": "home_ownership", "type": "categorical"},
        ],
        "model": {
            "kind": "linear",
            "training_window_days": 3,
            "holdout_days": 1,
            "window": {"policy": "sliding"},
        },
        "gate": {"value_thresholds": {"roc_auc": {"min": 0.5}}},
        "governance": {"slices": ["home_ownership"]},
    }


def with_resources(pipelines: Definitions) -> Definitions:
    """What a project's definitions.py does: the pipelines plus the shared resources."""
    return Definitions.merge(pipelines, Definitions(resources=profile_resources()))


def write_defs(folder: Path, attributes: dict, type_name: str = TYPE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": type_name, "attributes": attributes}))
    return folder


def test_the_repos_demo_pipeline_is_the_bundled_demo_spec():
    """defs/loan_default/defs.yaml repeats mlops_assets/demo_spec.yaml (the CLI's and the
    tests' demo): the two must not drift apart."""
    specs = {spec.name: spec for spec in project_pipelines(ROOT)}
    assert set(specs) == {"loan_default", "loan_default_linear"}
    demo = specs["loan_default"]
    assert demo.model_dump() == load_spec(DEMO_SPEC_PATH).model_dump()
    assert demo.is_bundled_demo and not specs["loan_default_linear"].is_bundled_demo
    assert demo.spec_path == ROOT / "defs" / "loan_default" / "defs.yaml"


def project_pipelines(root: Path) -> list:
    from mlops_assets.project import project_specs

    return list(project_specs(root).values())


def test_attributes_schema_takes_the_spec_its_shorthand_and_templates():
    """What `dg check yaml` and editors check: the schema derived from PipelineSpec takes the
    demo's attributes (slices by bare column name), templates in place of any value, and
    refuses unknown keys."""
    model = TabularMLPipeline.get_model_cls()
    model.model_validate(demo_attributes())
    slices = model.model_json_schema()["$defs"]["GovernanceSpecAttributes"]["properties"]
    assert {"type": "string"} in slices["slices"]["items"]["anyOf"]
    model.model_validate(demo_attributes(model={"training_window_days": "{{ env.DAYS }}"}))
    with pytest.raises(ValueError, match="traning_window_days"):
        model.model_validate(demo_attributes(model={"traning_window_days": 3}))


def test_templates_relative_paths_and_the_default_name(monkeypatch):
    """`{{ env.X }}` renders (an int where the spec wants one), a relative source path is taken
    from the defs.yaml's folder, plain strings such as "0" stay strings, and a pipeline without
    a name takes its folder's."""
    monkeypatch.setenv("MLOPS_TEST_WINDOW", "9")
    attributes = demo_attributes(
        model={"kind": "linear", "training_window_days": "{{ env.MLOPS_TEST_WINDOW }}"},
        source={"path": "data/loans_{date}.parquet"},
        governance={},
    )
    del attributes["name"]
    with create_defs_folder_sandbox() as sandbox:
        folder = write_defs(sandbox.defs_folder_path / "credit_risk", attributes)
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            spec = component.spec
            assert spec.name == "credit_risk" and spec.model.training_window_days == 9
            assert spec.classes == ["0", "1"]
            assert spec.source_pattern() == str(folder.resolve() / "data/loans_{date}.parquet")
            raw = with_resources(defs).resolve_assets_def(asset_key("credit_risk", "raw_data"))
            assert set(raw.group_names_by_key.values()) == {"credit_risk"}


def test_a_bad_attribute_names_the_file_and_the_key():
    with create_defs_folder_sandbox() as sandbox:
        folder = write_defs(
            sandbox.defs_folder_path / "bad", demo_attributes(model={"kind": "boosted_trees"})
        )
        with pytest.raises(Exception) as failure:  # noqa: B017 (Dagster wraps the SpecError)
            with sandbox.load_component_and_build_defs(defs_path=folder):
                pass
    text = "".join(str(e) for e in (failure.value, failure.value.__cause__) if e)
    assert str(folder / "defs.yaml") in text and "attributes.model.kind" in text, text


def test_scaffolded_starter_spec_loads():
    """`dg scaffold defs mlops_assets.TabularMLPipeline churn` writes a commented spec that is
    valid as written."""
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.scaffold_component(component_cls=TabularMLPipeline, defs_path="churn")
        text = (folder / "defs.yaml").read_text()
        assert "\n#" in text and "name: churn" in text
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert component.spec.name == "churn"
            assert with_resources(defs).resolve_job_def(scoped_name("churn", LIFECYCLE_JOB))


def test_cli_picks_a_pipeline_of_the_project_by_name(monkeypatch):
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    assert choose_spec(None, "loan_default_linear", ROOT).name == "loan_default_linear"
    assert choose_spec(None, None, ROOT).name == "loan_default"  # the demo, when several
    with pytest.raises(SpecError, match="--model nope: no pipeline of that name"):
        choose_spec(None, "nope", ROOT)
    assert choose_spec(None, None, ROOT / "docs").is_bundled_demo  # docs/ is in the project
    assert choose_spec(str(DEMO_SPEC_PATH), None, ROOT).spec_path == DEMO_SPEC_PATH.resolve()


def dg(*args: str, cwd: Path = ROOT, timeout: int = 600) -> str:
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    result = subprocess.run(
        [DG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_dg_lists_the_component_and_checks_and_lists_the_repos_pipelines(home):
    components = json.loads(dg("list", "components", "--json"))["items"]
    assert TYPE in {c["key"] for c in components}
    dg("check", "defs")
    assets = {a["asset_key"] for a in json.loads(dg("list", "defs", "--json"))["assets"]}
    for pipeline in ("loan_default", "loan_default_linear"):
        assert f"{pipeline}/candidate_model" in assets


def test_two_pipelines_run_side_by_side_with_their_own_champions_and_sensors(home, monkeypatch):
    """The demo (window 3) and a different spec in one code location: both load, run
    `lifecycle`, register separate MLflow models with separate champions, and each one's
    sensors see only its own assets and launch only its own jobs."""
    days = [DEMO_START + timedelta(days=i) for i in range(4)]
    data = home / "component_data"
    write_demo_data(data, start=days[0], days=len(days), rows_per_day=200)
    monkeypatch.setenv("MLOPS_COMPONENT_DATA", str(data))
    window = {"training_window_days": 3, "holdout_days": 1, "seed": 7}
    with create_defs_folder_sandbox() as sandbox:
        write_defs(
            sandbox.defs_folder_path / "loan_default",
            demo_attributes(
                source={"path": "{{ env.MLOPS_COMPONENT_DATA }}/loans_{date}.parquet"},
                model={"kind": "hist_gradient_boosting", **window},
                gate={"value_thresholds": {"roc_auc": {"min": 0.5}}},
                governance={},
            ),
        )
        linear = sandbox.defs_folder_path / "loan_linear"
        shutil.copytree(data, linear / "data")  # relative to its defs.yaml
        write_defs(linear, linear_attributes("data/loans_{date}.parquet"))
        with sandbox.build_all_defs() as pipelines:
            names = ("loan_default", "loan_linear")
            run_both(with_resources(pipelines), days, names, linear / "data")


def run_both(defs: Definitions, days: list, names: tuple[str, str], linear_data: Path) -> None:
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {f"{name}/model_promotion" for name in names} <= keys
    # nine lifecycle assets each, and online_features for the demo (online_features: true)
    assert len(keys) == 19 and "loan_default/online_features" in keys
    mlflow = MLflowResource()
    with instance_for_test() as instance:
        for name in names:
            for day in days:
                job = scoped_name(name, LIFECYCLE_JOB if day == days[-1] else INGEST_JOB)
                result = defs.resolve_job_def(job).execute_in_process(
                    partition_key=day.isoformat(), instance=instance
                )
                assert result.success
            promoted = instance.get_materialized_partitions(asset_key(name, "model_promotion"))
            assert promoted == {days[-1].isoformat()}
        assert mlflow.champion("loan_default_model") == "1"
        assert mlflow.champion("loan_linear_model") == "1"
        kinds = {
            name: mlflow.version_tags(f"{name}_model", "1")["mlops.model_kind"] for name in names
        }
        assert kinds == {"loan_default": "hist_gradient_boosting", "loan_linear": "linear"}
        # Drift evidence of one pipeline is none of the other's business.
        flagged = days[1].isoformat()
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=asset_key("loan_linear", "drift_report"),
                partition=flagged,
                metadata={"model_version": "1", "drift_detected": True, "drift_share": 0.9},
            )
        )
        # ... and so is a new day of its data: only loan_linear's file arrives.
        write_demo_data(linear_data, start=days[-1] + timedelta(days=1), days=1, rows_per_day=200)
        ticks = {
            (name, base): tick(defs, instance, scoped_name(name, base))
            for name in names
            for base in (NEW_DATA_SENSOR, DRIFT_SENSOR)
        }
        jobs = {key: {r.job_name for r in data.run_requests or []} for key, data in ticks.items()}
        for name in names:  # labels of the scored day are due first, or the new day's `daily`
            assert jobs[name, NEW_DATA_SENSOR] <= {f"{name}__daily", f"{name}__label_feedback"}
        assert jobs["loan_linear", NEW_DATA_SENSOR], ticks["loan_linear", NEW_DATA_SENSOR]
        new_day = (days[-1] + timedelta(days=1)).isoformat()
        requested = [r.partition_key for r in ticks["loan_default", NEW_DATA_SENSOR].run_requests]
        assert new_day not in requested  # (a first tick may re-request days it has not seen)
        assert jobs["loan_default", DRIFT_SENSOR] == set()
        quiet = ticks["loan_default", DRIFT_SENSOR].skip_message
        assert f"drift_report {days[-1].isoformat()}" in quiet and flagged not in quiet
        [retrain] = ticks["loan_linear", DRIFT_SENSOR].run_requests
        assert retrain.job_name == "loan_linear__retrain"
        assert retrain.partition_key == days[-1].isoformat()  # the newest labelled day


def tick(defs: Definitions, instance, sensor: str):
    with build_sensor_context(instance=instance, definitions=defs) as context:
        return defs.resolve_sensor_def(sensor).evaluate_tick(context)
