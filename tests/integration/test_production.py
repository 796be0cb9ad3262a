"""The whole lifecycle on the production profile: Dagster on PostgreSQL, MLflow server with
PostgreSQL + S3, asset values and reports in S3, Feast online store in Redis."""

import json
import os
import urllib.request

import boto3
import pandas as pd
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from mlops_assets.features import feature_refs
from mlops_assets.keys import asset_key
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource
from tests.conftest import TEST_TRAIN_DAYS, TEST_WARMUP_DAYS
from tests.integration.conftest import SECRET_VARS


def s3_keys(bucket: str, prefix: str) -> list[str]:
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def latest_metadata(pipeline: str, asset: str, partition: str) -> dict:
    key = asset_key(pipeline, asset)
    records = DagsterInstance.get().fetch_materializations(key, limit=100).records
    for record in records:
        if record.asset_materialization.partition == partition:
            return {k: v.value for k, v in record.asset_materialization.metadata.items()}
    raise AssertionError(f"{asset} {partition} not materialized")


def mlflow_api(path: str, body: dict | None = None) -> dict:
    """One MLflow REST call to the tracking server (GET, or POST with a JSON body)."""
    request = urllib.request.Request(
        f"{os.environ['MLFLOW_TRACKING_URI']}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_cli_runs_the_lifecycle_on_the_servers(production):
    summary = production["summary"]
    assert production["exit_code"] == 0, production["stderr"][-3000:]
    assert summary["runs_failed"] == 0
    assert len(summary["runs"]) >= TEST_WARMUP_DAYS + TEST_TRAIN_DAYS
    assert summary["champion_version"] is not None
    instance = DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    for run in summary["runs"]:
        assert instance.get_run_by_id(run["run_id"]).is_success
    assert not (production["home"] / "dagster" / "history").exists()


def test_asset_values_and_drift_reports_live_in_s3(production):
    bucket = os.environ["MLOPS_S3_BUCKET"]
    spec = production["spec"]
    day = production["summary"]["runs"][-1]["partition"]
    for asset in ("raw_data", "validated_data", "training_set"):
        prefix = f"dagster/{spec.name}/{asset}/"  # the IO manager's path: the asset key's
        assert f"{prefix}{day}.parquet" in s3_keys(bucket, prefix)  # tables as Parquet
    prefix = f"dagster/{spec.name}/candidate_model/"
    assert f"{prefix}{day}.json" in s3_keys(bucket, prefix)  # a plain dict as JSON
    assert not (production["home"] / "storage").exists()

    report_key = f"reports/drift_report/{spec.name}/{day}.html"
    link = latest_metadata(spec.name, "drift_report", day)["drift_report_html"]
    assert link == f"s3://{bucket}/{report_key}"
    html = boto3.client("s3").get_object(Bucket=bucket, Key=report_key)["Body"].read().decode()
    assert "<html" in html and "drift" in html.lower()
    missing = [feature for feature in spec.feature_names if feature not in html]
    assert not missing, f"features missing from the drift report: {missing}"
    assert not (production["home"] / "reports").exists()


def test_mlflow_server_holds_runs_registry_and_s3_artifacts(production):
    spec = production["spec"]
    champion = production["summary"]["champion_version"]
    model = mlflow_api(f"/api/2.0/mlflow/registered-models/get?name={spec.model_name}")
    aliases = {a["alias"]: a["version"] for a in model["registered_model"]["aliases"]}
    assert aliases[CHAMPION_ALIAS] == str(champion)

    day = production["summary"]["runs"][-1]["partition"]
    meta = latest_metadata(spec.name, "candidate_model", day)
    server = os.environ["MLFLOW_TRACKING_URI"]
    assert meta["mlflow_run"].startswith(f"{server}/#/experiments/")
    assert meta["mlflow_model_version"] == (
        f"{server}/#/models/{spec.model_name}/versions/{meta['model_version']}"
    )
    run = mlflow_api(f"/api/2.0/mlflow/runs/get?run_id={meta['mlflow_run_id']}")["run"]
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    assert s3_keys(os.environ["MLOPS_S3_BUCKET"], "mlflow/"), "no MLflow artifact reached S3"
    assert not (production["home"] / "mlflow").exists()

    resource = MLflowResource(tracking_uri=server)
    loaded = resource.load_model(f"models:/{spec.model_name}@{CHAMPION_ALIAS}")
    rows = pd.read_parquet(production["home"] / "demo_data" / f"loans_{day}.parquet").head(20)
    predictions = loaded.predict(rows[spec.feature_names])
    assert len(predictions) == 20


def test_feast_online_store_is_redis(production):
    import redis

    spec = production["spec"]
    client = redis.Redis(
        host=os.environ["MLOPS_REDIS_HOST"],
        port=int(os.environ["MLOPS_REDIS_PORT"]),
        password=os.environ["MLOPS_REDIS_PASSWORD"],
    )
    assert client.dbsize() > 0
    assert not (production["home"] / "feast" / "online.db").exists()

    # The newest day's rows are the latest values of their entities: Redis must serve them.
    newest = max((production["home"] / "feast" / "offline" / spec.name).glob("*.parquet"))
    offline = pd.read_parquet(newest).sort_values(spec.timestamp)
    latest = offline.groupby(spec.entity_key).tail(1).tail(10).set_index(spec.entity_key)
    address = f"{os.environ['MLOPS_REDIS_HOST']}:{os.environ['MLOPS_REDIS_PORT']}"
    feast = FeastResource(
        online_store={"type": "redis", "connection_string": address},
        online_store_password=os.environ["MLOPS_REDIS_PASSWORD"],
    )
    online = feast.online_features(
        [{spec.entity_key: key} for key in latest.index], feature_refs(spec)
    ).set_index(spec.entity_key)
    pd.testing.assert_frame_equal(
        online.loc[latest.index, spec.feature_names],
        latest[spec.feature_names],
        check_dtype=False,
        check_categorical=False,
    )


def test_bad_partition_is_stopped_by_the_blocking_check(production, bad_partition):
    result, day = bad_partition["result"], bad_partition["day"]
    assert not result.success
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "great_expectations_suite"
    ]
    assert not evaluation.passed
    failed = {f["rule"] for f in evaluation.metadata["failed_expectations"].value}
    assert "expect_column_values_to_not_be_null(income)" in failed
    assert "expect_column_values_to_be_between(debt_to_income)" in failed
    instance = DagsterInstance.get()
    for downstream in ("features", "training_set", "candidate_model", "batch_predictions"):
        key = asset_key(production["spec"], downstream)
        assert day not in instance.get_materialized_partitions(key)
        prefix = f"dagster/{production['spec'].name}/{downstream}/"
        stored = s3_keys(os.environ["MLOPS_S3_BUCKET"], prefix)
        assert not [key for key in stored if key.startswith(f"{prefix}{day}")]


def test_credentials_never_reach_logs_metadata_or_mlflow(production, bad_partition):
    secrets = {name: os.environ[name] for name in SECRET_VARS}
    instance = DagsterInstance.get()
    events = [
        serialize_value(record)
        for run in instance.get_runs()
        for record in instance.all_logs(run.run_id)
    ]
    assert len(events) > 100
    experiment = mlflow_api("/api/2.0/mlflow/experiments/get-by-name?experiment_name=mlops-suite")
    tracked = mlflow_api(
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000},
    )
    assert tracked["runs"]
    places = {
        "CLI stdout": production["stdout"],
        "CLI stderr": production["stderr"],
        "Dagster event log": "\n".join(events),
        "MLflow runs (params, tags, metrics)": json.dumps(tracked),
    }
    for place, text in places.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} leaked into {place}"
