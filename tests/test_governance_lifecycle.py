"""Governance on the real lifecycle state (MLflow registry, Dagster instance): lineage tags and
model cards of every version, audit trail of promotions, staleness, reproduction, retirement and
the optional calibration step."""

import getpass
import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, RunsFilter, materialize
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from mlops_assets.demo_data import generate_day
from mlops_assets.keys import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    DRIFT_SENSOR,
    RETIRE_JOB,
    RETIRE_OP,
    asset_key,
    scoped_name,
)
from mlops_assets.ml.governance.lineage import (
    ARTIFACT_DIR,
    CARD_FILE,
)
from mlops_assets.pipeline import build_assets, build_definitions, default_resources
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource
from tests.conftest import TEST_WARMUP_DAYS, TEST_WINDOW_DAYS, run_cli, write_spec
from tests.test_lifecycle import latest_metadata


def trained_runs(lifecycle) -> list[dict]:
    return lifecycle["summary"]["runs"][TEST_WARMUP_DAYS:]


def test_every_version_records_lineage_and_a_model_card(lifecycle, tmp_path):
    instance = DagsterInstance.get()
    client = MLflowResource().client()
    spec = lifecycle["spec"]
    code_version = (
        build_definitions(spec)
        .resolve_assets_def(asset_key(spec, "candidate_model"))
        .code_versions_by_key
    )
    for run in trained_runs(lifecycle):
        version = client.get_model_version(spec.model_name, run["model_version"])
        training_set = instance.fetch_materializations(
            asset_key(spec, "training_set"), limit=50
        ).records
        hashes = {
            r.asset_materialization.partition: r.asset_materialization.tags["dagster/data_version"]
            for r in reversed(training_set)
        }
        assert version.tags[DATA_VERSION_TAG] == hashes[run["partition"]]
        assert version.tags[CODE_VERSION_TAG] == code_version[asset_key(spec, "candidate_model")]
        assert version.tags["mlops.git_commit"]
        folder = Path(client.download_artifacts(version.run_id, ARTIFACT_DIR, str(tmp_path)))
        names = {p.name for p in folder.iterdir()}
        assert {CARD_FILE, "calibration_curve.png", "metric_by_slice.png"} <= names
        assert (folder / "calibration_curve.png").read_bytes().startswith(b"\x89PNG")
        card = (folder / CARD_FILE).read_text()
        for section in (
            "## Intended use",
            "## Data and code lineage",
            "## Metrics by slice",
            "## Fairness: `age`",
            "## Calibration",
            "## Gate verdict",
            "## Known limitations",
        ):
            assert section in card
        assert "Decision support for loan underwriters" in card
        assert version.tags[DATA_VERSION_TAG] in card
        assert run["gate"]["why"] in card  # the card was re-rendered with the verdict
        report = json.loads((folder / "report.json").read_text())
        features = report["lineage"]["data_versions"]["features"]
        # the window's days whose labels were delivered when it trained: not its own day
        assert len(features) == TEST_WINDOW_DAYS and run["partition"] not in features
        assert {s["slice"] for s in report["slices"]} == {"region", "home_ownership", "age", "day"}
        metrics = client.get_run(version.run_id).data.metrics
        assert 0.8 <= metrics["fairness_disparate_impact_ratio"] <= 1.0
        assert metrics["calibration_ece"] == pytest.approx(
            report["calibration"]["expected_calibration_error"]
        )
        gate = latest_metadata(instance, "model_promotion", run["partition"])
        assert gate["model_card"] == card
        model = latest_metadata(instance, "candidate_model", run["partition"])
        assert "Not gated yet." in model["model_card"]


def test_promotions_are_audited_in_mlflow_and_dagster(lifecycle):
    mlflow = MLflowResource()
    name = lifecycle["spec"].model_name
    promoted = [r for r in trained_runs(lifecycle) if r["gate"]["champion_moved"]]
    assert promoted
    instance = DagsterInstance.get()
    audited = instance.get_runs(RunsFilter(tags={"mlops/action": "promote"}))
    assert {r.run_id for r in audited} >= {r["run_id"] for r in promoted}
    for run in promoted:
        tags = mlflow.client().get_model_version(name, run["model_version"]).tags
        assert tags["mlops.promoted_by"] == f"user:{getpass.getuser()}"
        assert tags["mlops.promoted_run_id"] == run["run_id"]
        assert tags["mlops.promoted_reason"] == run["gate"]["why"]
        assert datetime.fromisoformat(tags["mlops.promoted_at"]).tzinfo is not None
        dagster_tags = instance.get_run_by_id(run["run_id"]).tags
        assert dagster_tags["mlops/model_version"] == f"{name}/{run['model_version']}"


def test_model_is_stale_when_its_code_or_spec_changes(lifecycle, tmp_path):
    instance = DagsterInstance.get()
    day = trained_runs(lifecycle)[-1]["partition"]
    resolver = get_stale_status_resolver(instance, build_assets(lifecycle["spec"]))
    candidate = asset_key(lifecycle["spec"], "candidate_model")
    assert resolver.get_status(candidate, day) == StaleStatus.FRESH
    base = yaml.safe_load(lifecycle["spec_path"].read_text())
    changed = load_spec(
        write_spec(
            tmp_path / "spec.yaml",
            model={**base["model"], "params": {"max_iter": 10}},
        )
    )
    resolver = get_stale_status_resolver(instance, build_assets(changed))
    assert resolver.get_status(candidate, day) == StaleStatus.STALE
    causes = resolver.get_stale_causes(candidate, day)
    assert any("code version" in cause.reason for cause in causes)
    assert resolver.get_status(asset_key(changed, "raw_data"), day) == StaleStatus.FRESH


def test_downstream_is_stale_when_input_data_changes(home, tmp_path):
    day = "2024-01-01"
    source = tmp_path / "loans.csv"
    generate_day(load_spec().partitions.start, rows=60).to_csv(source, index=False)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", source={"path": str(source)}))
    instance = DagsterInstance.ephemeral()
    assets = build_assets(spec)
    raw, validated = asset_key(spec, "raw_data"), asset_key(spec, "validated_data")
    materialize(
        assets,
        selection=[raw, validated],
        partition_key=day,
        instance=instance,
        resources=default_resources(),
    )
    resolver = get_stale_status_resolver(instance, assets)
    assert resolver.get_status(validated, day) == StaleStatus.FRESH
    generate_day(load_spec().partitions.start, rows=50).to_csv(source, index=False)
    materialize(
        assets,
        selection=[raw],
        partition_key=day,
        instance=instance,
        resources=default_resources(),
    )
    resolver = get_stale_status_resolver(instance, assets)
    assert resolver.get_status(validated, day) == StaleStatus.STALE
    causes = resolver.get_stale_causes(validated, day)
    assert any("new dependency data version" in cause.reason for cause in causes)


@pytest.fixture(scope="module")
def calibrated_version(lifecycle, tmp_path_factory) -> str:
    """One extra candidate with the sigmoid calibration step, registered but not gated."""
    base = yaml.safe_load(lifecycle["spec_path"].read_text())
    spec = load_spec(
        write_spec(
            tmp_path_factory.mktemp("calibrated") / "spec.yaml",
            governance={**base["governance"], "calibration": {"method": "sigmoid", "folds": 3}},
        )
    )
    result = materialize(
        build_assets(spec),
        selection=[asset_key(spec, "candidate_model")],
        partition_key=trained_runs(lifecycle)[-1]["partition"],
        resources=default_resources(),
    )
    candidate = result.asset_value(asset_key(spec, "candidate_model"))
    assert candidate["governance"]["calibration"]["method"] == "sigmoid"
    return candidate["version"]


def test_reproduce_gets_the_same_metrics(lifecycle, calibrated_version):
    spec_path = str(lifecycle["spec_path"])
    champion = lifecycle["summary"]["champion_version"]
    code, out = run_cli("reproduce", "--version", champion, "--config", spec_path)
    assert code == 0, out
    assert "reproduced: same metrics" in out
    code, out = run_cli(
        "reproduce", "--version", calibrated_version, "--json", "--config", spec_path
    )
    result = json.loads(out)
    assert code == 0 and result["match"] and {m["metric"] for m in result["metrics"]} >= {"roc_auc"}
    assert result["code_version_now"] == result["code_version"]  # same code, same spec
    client = MLflowResource().client()
    name = lifecycle["spec"].model_name
    assert client.get_model_version(name, calibrated_version).tags["mlops.reproduced"] == "match"
    # A recorded metric that the inputs cannot give back is reported, with exit code 1.
    run_id = client.get_model_version(name, calibrated_version).run_id
    client.log_metric(run_id, "holdout_roc_auc", 0.123, step=1)
    code, out = run_cli("reproduce", "--version", calibrated_version, "--config", spec_path)
    assert code == 1 and "roc_auc" in out and "DIFFERS" in out and "NOT reproduced" in out
    assert run_cli("reproduce", "--version", "999", "--config", spec_path)[0] == 2


def test_retirement_archives_a_version_and_refuses_the_champion(
    lifecycle, calibrated_version, capsys, tmp_path
):
    mlflow = MLflowResource()
    client = mlflow.client()
    name = lifecycle["spec"].model_name
    spec_path = str(lifecycle["spec_path"])
    champion = mlflow.champion(name)

    code, _ = run_cli("retire", "--version", champion, "--reason", "test", "--config", spec_path)
    assert code == 1 and "is the current champion" in capsys.readouterr().err
    assert mlflow.champion(name) == champion
    assert "mlops.retired" not in client.get_model_version(name, champion).tags

    client.set_registered_model_alias(name, "candidate", calibrated_version)
    reason = "superseded by the uncalibrated model"
    code, out = run_cli(
        "retire", "--version", calibrated_version, "--reason", reason, "--config", spec_path
    )
    assert code == 0 and f"retired {name} v{calibrated_version}" in out
    version = client.get_model_version(name, calibrated_version)
    assert version.aliases == [] and version.tags["mlops.retired"] == "true"
    assert version.tags["mlops.retired_by"] == f"user:{getpass.getuser()}"
    assert version.tags["mlops.retired_reason"] == reason
    card = client.download_artifacts(version.run_id, f"{ARTIFACT_DIR}/{CARD_FILE}", str(tmp_path))
    assert "## Gate verdict" in Path(card).read_text()  # artifacts and card are kept
    runs = DagsterInstance.get().get_runs(RunsFilter(tags={"mlops/action": "retire"}))
    assert runs[0].tags["mlops/model_version"] == f"{name}/{calibrated_version}"
    assert runs[0].tags["mlops/reason"] == reason

    # Forced, from a sensor: the champion alias goes; who did it is the sensor.
    defs = build_definitions(lifecycle["spec"])
    try:
        job = defs.resolve_job_def(scoped_name(lifecycle["spec"], RETIRE_JOB))
        result = job.execute_in_process(
            run_config={
                "ops": {
                    scoped_name(lifecycle["spec"], RETIRE_OP): {
                        "config": {"version": champion, "reason": "drift", "force": True}
                    }
                }
            },
            instance=DagsterInstance.get(),
            tags={"dagster/sensor_name": scoped_name(lifecycle["spec"], DRIFT_SENSOR)},
        )
        assert result.success and mlflow.champion(name) is None
        tags = client.get_model_version(name, champion).tags
        assert tags["mlops.retired_by"] == f"sensor:{scoped_name(lifecycle['spec'], DRIFT_SENSOR)}"
    finally:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, champion)
        client.delete_model_version_tag(name, champion, "mlops.retired")
