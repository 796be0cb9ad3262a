"""The closed loop on the session's demo story: drift reports, the sensors (ticked through
Dagster's sensor API), retraining once per trigger, the schedule, concept drift, rollback and
shadow scoring. Tests that move the champion put it back before they end."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    RunsFilter,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from mlops_assets.demo_data import DRIFT_START, generate_day, write_demo_data
from mlops_assets.keys import (
    DAILY_JOB,
    DRIFT_SENSOR,
    FEEDBACK_JOB,
    NEW_DATA_SENSOR,
    NIGHTLY_SCHEDULE,
    RETIRE_JOB,
    RETRAIN_JOB,
    ROLLBACK_JOB,
    ROLLBACK_OP,
    asset_key,
    scoped_name,
)
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_assets.story import SensorTicker, already_launched
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLflowResource
from tests.conftest import (
    TEST_MONITOR_DAYS,
    TEST_ROWS_PER_DAY,
    TEST_STATIONARY_DAYS,
    run_cli,
    write_spec,
)

# Every spec here is the demo's (or a variant of it): one pipeline name.
PIPELINE = "loan_default"


def metadata(instance: DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(asset_key(PIPELINE, asset), limit=200).records
    for record in records:
        if record.asset_materialization.partition == partition:
            return {k: v.value for k, v in record.asset_materialization.metadata.items()}
    raise AssertionError(f"{asset} {partition} not materialized")


def run_job(spec_path: Path, job: str, partition: str | None = None, **kwargs):
    """Run the spec's `job` (a base name: `daily`, not `<pipeline>__daily`)."""
    spec = load_spec(spec_path)
    return (
        build_definitions(spec)
        .resolve_job_def(scoped_name(spec, job))
        .execute_in_process(
            partition_key=partition, instance=DagsterInstance.get(), raise_on_error=False, **kwargs
        )
    )


def test_story_reports_every_simulated_day(lifecycle):
    days = lifecycle["summary"]["days"]
    assert lifecycle["exit_code"] == 0, lifecycle["summary"]
    assert len(days) == TEST_MONITOR_DAYS
    for day in days:
        assert {"drift", "drift_sensor", "new_data_sensor", "champion_version"} <= set(day)
        assert day["drift"]["drift_share"] is not None
        assert isinstance(day["drift"]["drifted_columns"], dict)
        requested = day["new_data_sensor"]["run_requests"]
        assert (DAILY_JOB, day["day"]) in [(r["job"], r["partition"]) for r in requested]
        assert all(run["success"] for run in day["runs"]), day["runs"]
        assert day["champion_version"] is not None


def test_drift_sensor_quiet_before_the_change_and_fires_within_two_partitions(lifecycle):
    days = lifecycle["summary"]["days"]
    stationary = days[:TEST_STATIONARY_DAYS]
    assert all(date.fromisoformat(d["day"]) < DRIFT_START for d in stationary)
    for day in stationary:
        assert not day["drift"]["drift_detected"], day["drift"]
        assert day["drift_sensor"]["run_requests"] == [], day["drift_sensor"]
        assert day["drift_sensor"]["skip"].startswith("no action")
    after = [d for d in days if date.fromisoformat(d["day"]) >= DRIFT_START]
    assert after[0]["day"] == DRIFT_START.isoformat()
    assert after[0]["drift"]["drift_detected"]
    assert {"income", "debt_to_income"} <= set(after[0]["drift"]["drifted_columns"])
    retrains = [
        r for d in after[:2] for r in d["drift_sensor"]["run_requests"] if r["job"] == RETRAIN_JOB
    ]
    assert retrains, "no retraining within two partitions of the change"
    assert retrains[0]["partition"] == DRIFT_START.isoformat()
    ran = [r for d in after for r in d["retraining_runs"]]
    assert ran and ran[0]["success"] and ran[0]["run_key"] == retrains[0]["run_key"]
    assert [v for d in after for v in d["gate_verdicts"]], "the gate gave no verdict"


def test_drift_report_links_its_html_and_records_sizes(lifecycle):
    instance = DagsterInstance.get()
    meta = metadata(instance, "drift_report", DRIFT_START.isoformat())
    html = Path(meta["drift_report_html"])
    assert html.is_file() and html.is_relative_to(lifecycle["home"])
    assert "<html" in html.read_text(encoding="utf-8")[:2000].lower()
    assert meta["current_rows"] == TEST_ROWS_PER_DAY
    assert meta["reference_rows"] > 0 and meta["sampled"] is False
    assert 0 < meta["drift_share"] <= 1
    [run] = [
        r
        for d in lifecycle["summary"]["days"]
        for r in d["runs"]
        if r["job"] == DAILY_JOB and r["partition"] == DRIFT_START.isoformat()
    ]
    [check] = [c for c in run["checks"] if c["check"] == "drift_share_below_threshold"]
    assert not check["passed"] and "features drifted" in check["description"]


def test_each_trigger_launches_one_run_even_after_sensor_restarts(lifecycle):
    instance = DagsterInstance.get()
    spec = lifecycle["spec"]
    drift_sensor = scoped_name(spec, DRIFT_SENSOR)
    runs = instance.get_runs(filters=RunsFilter(tags={"dagster/sensor_name": drift_sensor}))
    # (a governance test launches retire_model "from" this sensor, without a run_key)
    keys = [r.tags["dagster/run_key"] for r in runs if r.job_name != scoped_name(spec, RETIRE_JOB)]
    assert keys and len(keys) == len(set(keys))
    defs = build_definitions(spec)
    for name in (DRIFT_SENSOR, NEW_DATA_SENSOR):
        sensor = scoped_name(spec, name)
        restarted = SensorTicker(defs, instance, sensor)  # cursor lost, as after a crash
        requests, _ = restarted.tick()
        story_days = {d["day"] for d in lifecycle["summary"]["days"]}
        evaluated = instance.get_materialized_partitions(asset_key(spec, "model_performance"))
        for request in requests:
            if request.job_name == scoped_name(spec, FEEDBACK_JOB):  # labels newly due
                assert request.partition_key not in evaluated, request
            elif request.partition_key in story_days or request.job_name == scoped_name(
                spec, RETRAIN_JOB
            ):
                assert already_launched(instance, sensor, request.run_key), request
        again, skip = restarted.tick()  # a second tick with the cursor it returned
        if name == DRIFT_SENSOR:
            assert again == [] and skip


def tick(sensor, instance, defs, cursor=None):
    """One evaluation through Dagster's testing API; the context is closed after it."""
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
        return sensor.evaluate_tick(context)


def test_new_data_sensor_requests_each_file_version_once(tmp_path):
    spec_path = write_spec(
        tmp_path / "spec.yaml", source={"path": str(tmp_path / "data" / "loans_{date}.parquet")}
    )
    spec = load_spec(spec_path)
    write_demo_data(tmp_path / "data", start=date(2024, 1, 1), days=2, rows_per_day=20)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, NEW_DATA_SENSOR))
    daily = scoped_name(spec, DAILY_JOB)
    with instance_for_test() as instance:
        first = tick(sensor, instance, defs)
        assert [(r.job_name, r.partition_key) for r in first.run_requests] == [
            (daily, "2024-01-01"),
            (daily, "2024-01-02"),
        ]
        second = tick(sensor, instance, defs, first.cursor)
        assert not second.run_requests and "no new source files" in second.skip_message
        write_demo_data(
            tmp_path / "data", start=date(2024, 1, 2), days=1, rows_per_day=30, overwrite=True
        )
        third = tick(sensor, instance, defs, first.cursor)
        [changed] = third.run_requests
        assert changed.partition_key == "2024-01-02"
        assert changed.run_key != first.run_requests[1].run_key


def test_nightly_schedule_retrains_yesterday_and_is_off_unless_configured(lifecycle, tmp_path):
    spec = lifecycle["spec"]
    schedule = build_definitions(spec).resolve_schedule_def(scoped_name(spec, NIGHTLY_SCHEDULE))
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    with instance_for_test() as instance:
        with build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2024, 2, 27, 2, tzinfo=UTC)
        ) as context:
            [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-02-26"
    assert schedule.job_name == scoped_name(spec, RETRAIN_JOB)
    monitoring = yaml.safe_load(lifecycle["spec_path"].read_text())["monitoring"]
    on = write_spec(tmp_path / "on.yaml", monitoring={**monitoring, "nightly_training": True})
    schedule_on = build_definitions(load_spec(on)).resolve_schedule_def(
        scoped_name(spec, NIGHTLY_SCHEDULE)
    )
    assert schedule_on.default_status == DefaultScheduleStatus.RUNNING


def test_concept_drift_is_caught_by_performance_not_by_data_drift(lifecycle):
    """Same feature distribution as the training data, inverted label relationship."""
    day = lifecycle["extra_days"][1]
    before = generate_day(DRIFT_START - timedelta(days=10), TEST_ROWS_PER_DAY)
    shifted = before.assign(
        event_timestamp=before["event_timestamp"]
        + pd.Timedelta(days=(day - DRIFT_START).days + 10),
        defaulted=1 - before["defaulted"],
    )
    shifted.to_parquet(lifecycle["home"] / "demo_data" / f"loans_{day}.parquet", index=False)
    assert run_job(lifecycle["spec_path"], DAILY_JOB, day.isoformat()).success
    # its labels are delivered with the next day's file, not before
    assert not run_job(lifecycle["spec_path"], FEEDBACK_JOB, day.isoformat()).success
    following = day + timedelta(days=1)
    generate_day(following, TEST_ROWS_PER_DAY).to_parquet(
        lifecycle["home"] / "demo_data" / f"loans_{following}.parquet", index=False
    )
    drift = metadata(DagsterInstance.get(), "drift_report", day.isoformat())
    assert not drift["drift_detected"], drift
    assert run_job(lifecycle["spec_path"], FEEDBACK_JOB, day.isoformat()).success
    performance = metadata(DagsterInstance.get(), "model_performance", day.isoformat())
    assert performance["degraded"] and performance["degraded_metrics"] == ["roc_auc"]
    assert performance["live_roc_auc"] < 0.5


def permissive_spec(lifecycle: dict, path: Path, shadow_days: int) -> Path:
    """The session's spec with a gate that blesses any reasonable candidate."""
    raw = yaml.safe_load(lifecycle["spec_path"].read_text())
    gate = {
        "value_thresholds": {"roc_auc": {"min": 0.5}},
        "change_thresholds": {"roc_auc": {"min_absolute_change": -1.0}},
        "shadow_days": shadow_days,
    }
    return write_spec(path, **{**raw, "gate": gate})


def test_rollback_restores_previous_champion_and_predictions_use_it(lifecycle, tmp_path):
    spec, mlflow = lifecycle["spec"], MLflowResource()
    name = spec.model_name
    previous = mlflow.champion(name)
    last = lifecycle["summary"]["days"][-1]["day"]
    assert run_job(permissive_spec(lifecycle, tmp_path / "p.yaml", 0), RETRAIN_JOB, last).success
    champion = mlflow.champion(name)
    assert champion != previous
    assert mlflow.version_tags(name, champion)["mlops.replaced_version"] == previous
    config = str(lifecycle["spec_path"])
    try:
        assert run_cli("rollback", "--config", config, "--reason", "worse on labelled data")[0] == 0
        assert mlflow.champion(name) == previous
        tags = mlflow.version_tags(name, champion)
        assert tags["mlops.rolled_back_reason"] == "worse on labelled data"
        assert tags["mlops.rolled_back_by"].startswith("user")
        assert tags["mlops.rolled_back_to"] == previous
        day = lifecycle["extra_days"][1].isoformat()
        assert run_job(lifecycle["spec_path"], DAILY_JOB, day).success
        assert metadata(DagsterInstance.get(), "batch_predictions", day)["champion_version"] == (
            previous
        )
        assert (
            run_cli("rollback", "--config", config, "--reason", "x", "--to-version", "999")[0] == 1
        )
    finally:
        mlflow.set_alias(name, "champion", previous)


def test_two_rollback_requests_for_one_champion_move_the_alias_once(lifecycle, tmp_path):
    """Compare-and-set on the version rolled back from: the second request finds the champion
    moved and records why instead of rolling back again (to the first model)."""
    spec, mlflow = lifecycle["spec"], MLflowResource()
    name = spec.model_name
    previous = mlflow.champion(name)
    last = lifecycle["summary"]["days"][-1]["day"]
    assert run_job(permissive_spec(lifecycle, tmp_path / "p.yaml", 0), RETRAIN_JOB, last).success
    regressed = mlflow.champion(name)
    assert regressed != previous
    config = {"reason": "worse on labelled data", "from_version": regressed}
    try:
        records = []
        for _ in range(2):
            result = run_job(
                lifecycle["spec_path"],
                ROLLBACK_JOB,
                run_config={"ops": {scoped_name(spec, ROLLBACK_OP): {"config": config}}},
            )
            assert result.success
            records.append(result.output_for_node(scoped_name(spec, ROLLBACK_OP)))
        assert records[0]["to_version"] == previous
        assert records[1]["skipped"] == "true"
        assert f"champion of {name} is now v{previous}" in records[1]["message"]
        assert mlflow.champion(name) == previous
    finally:
        mlflow.set_alias(name, "champion", previous)


def test_shadow_period_scores_the_challenger_before_promotion(lifecycle, tmp_path):
    mlflow = MLflowResource()
    name = lifecycle["spec"].model_name
    champion = mlflow.champion(name)
    spec_path = permissive_spec(lifecycle, tmp_path / "shadow.yaml", 1)
    last = lifecycle["summary"]["days"][-1]["day"]
    try:
        assert run_job(spec_path, RETRAIN_JOB, last).success
        challenger = mlflow.alias_version(name, CHALLENGER_ALIAS)
        assert challenger is not None and mlflow.champion(name) == champion
        day = lifecycle["extra_days"][1].isoformat()
        assert run_job(spec_path, DAILY_JOB, day).success
        predictions = metadata(DagsterInstance.get(), "batch_predictions", day)
        assert predictions["challenger_version"] == challenger
        assert 0 <= predictions["shadow_comparison"]["agreement"] <= 1
        assert mlflow.version_tags(name, challenger)["mlops.shadow_partitions"] == day
        assert run_job(spec_path, RETRAIN_JOB, last).success  # shadow period done: promoted
        assert mlflow.champion(name) == challenger
        assert mlflow.version_tags(name, challenger)["mlops.replaced_version"] == champion
    finally:
        if mlflow.alias_version(name, CHALLENGER_ALIAS):
            mlflow.delete_alias(name, CHALLENGER_ALIAS)
        mlflow.set_alias(name, "champion", champion)


@pytest.fixture(autouse=True)
def _story_state(lifecycle):
    """Every test here reads the session story's state."""
    summary = lifecycle["summary"]
    assert summary["days"], json.dumps(summary)[:2000]


def test_drift_sensor_requests_rollback_once_when_the_champion_regressed(lifecycle):
    """A model_performance result recommending rollback -> one `rollback` request; the same
    result read again (lost cursor) gives the same run_key."""
    from dagster import AssetMaterialization

    spec = lifecycle["spec"]
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, DRIFT_SENSOR))
    with instance_for_test() as instance:
        for day in ("2024-03-01", "2024-03-02"):  # two days recommend it: still one request
            instance.report_runless_asset_event(
                AssetMaterialization(
                    asset_key=asset_key(spec, "model_performance"),
                    partition=day,
                    metadata={
                        "model_version": "7",
                        "replaced_version": "6",
                        "degraded": True,
                        "degraded_metrics": ["roc_auc"],
                        "rollback_recommended": True,
                    },
                )
            )
        first = tick(sensor, instance, defs)
        [request] = first.run_requests
        assert request.job_name == scoped_name(spec, ROLLBACK_JOB)
        assert request.run_key == "rollback:from-v7"
        config = request.run_config["ops"][scoped_name(spec, ROLLBACK_OP)]["config"]
        assert config["from_version"] == "7"
        assert "v7 is worse than the version it replaced (v6)" in config["reason"]
        assert not tick(sensor, instance, defs, first.cursor).run_requests
        assert tick(sensor, instance, defs).run_requests[0].run_key == request.run_key


def test_drift_report_follows_its_inputs_once_the_blocking_check_passed(lifecycle):
    """Declarative automation: a newer batch_predictions of the latest day requests
    drift_report only after validated_data's blocking GX check has passed for that day."""
    from dagster import AssetCheckEvaluation, AssetMaterialization, evaluate_automation_conditions

    spec = lifecycle["spec"]
    defs = build_definitions(spec)
    day = (spec.partitions.end - timedelta(days=1)).isoformat()
    drift_report = asset_key(spec, "drift_report")
    with instance_for_test() as instance:
        result = evaluate_automation_conditions(defs=defs, instance=instance)
        for name in ("validated_data", "batch_predictions"):
            instance.report_runless_asset_event(
                AssetMaterialization(asset_key=asset_key(spec, name), partition=day)
            )
        result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_requested_partitions(drift_report) == set()
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=asset_key(spec, "validated_data"),
                check_name="great_expectations_suite",
                passed=True,
                partition=day,
            )
        )
        result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_requested_partitions(drift_report) == {day}
