"""End to end: the demo lifecycle through Dagster on the embedded defaults."""

from pathlib import Path

import pandas as pd
from dagster import DagsterInstance

from mlops_assets.features import feature_refs
from mlops_assets.keys import INGEST_JOB, LIFECYCLE_JOB, asset_key
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource
from tests.conftest import TEST_ROWS_PER_DAY, TEST_TRAIN_DAYS, TEST_WARMUP_DAYS


def latest_metadata(
    instance: DagsterInstance, asset: str, partition: str, pipeline: str = "loan_default"
) -> dict:
    """The metadata of `pipeline`'s `asset` (the lifecycle's, by default) for `partition`."""
    key = asset_key(pipeline, asset)
    event = instance.get_latest_materialization_event(key)
    records = instance.fetch_materializations(key, limit=100).records
    for record in records:
        materialization = record.asset_materialization
        if materialization.partition == partition:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} {partition} not materialized (latest: {event})")


def test_cli_summary_reports_every_run(lifecycle):
    summary = lifecycle["summary"]
    assert lifecycle["exit_code"] == 0
    jobs = [run["job"] for run in summary["runs"]]
    assert jobs == [INGEST_JOB] * TEST_WARMUP_DAYS + [LIFECYCLE_JOB] * TEST_TRAIN_DAYS
    assert all(run["success"] for run in summary["runs"])
    for run in summary["runs"]:
        assert run["raw_data_rows"] == TEST_ROWS_PER_DAY
        assert run["validated_data_rows"] == TEST_ROWS_PER_DAY
        assert {c["check"] for c in run["checks"]} >= {"great_expectations_suite"}
    first_training = summary["runs"][TEST_WARMUP_DAYS]
    assert first_training["model_version"] == "1"
    assert first_training["gate"]["champion_before"] == "none"
    assert "no champion yet: value thresholds only" in first_training["gate"]["why"]
    assert 0.5 < first_training["model_metrics"]["roc_auc"] <= 1.0
    assert summary["champion_version"] is not None


def test_champion_is_set_and_tagged(lifecycle):
    mlflow = MLflowResource()
    name = lifecycle["spec"].model_name
    assert mlflow.champion(name) == lifecycle["summary"]["champion_version"]
    champion = mlflow.client().get_model_version_by_alias(name, CHAMPION_ALIAS)
    assert champion.tags["mlops.blessed"] == "true"
    assert champion.tags["mlops.model_kind"] == "hist_gradient_boosting"


def test_predictions_exist_for_each_trained_day(lifecycle):
    instance = DagsterInstance.get()
    spec = lifecycle["spec"]
    for run in lifecycle["summary"]["runs"][TEST_WARMUP_DAYS:]:
        meta = latest_metadata(instance, "batch_predictions", run["partition"])
        assert meta["dagster/row_count"] == TEST_ROWS_PER_DAY
        storage = Path(lifecycle["home"]) / "storage" / spec.name / "batch_predictions"
        stored = pd.read_parquet(storage / f"{run['partition']}.parquet")
        assert len(stored) == TEST_ROWS_PER_DAY
        assert set(stored["prediction"]) <= set(spec.classes)
        assert stored["score"].between(0, 1).all()


def test_metadata_links_resolve(lifecycle):
    instance = DagsterInstance.get()
    mlflow = MLflowResource()
    client = mlflow.client()
    day = lifecycle["summary"]["runs"][-1]["partition"]
    model_meta = latest_metadata(instance, "candidate_model", day)
    run = client.get_run(model_meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert model_meta["mlflow_run"].endswith(run.info.run_id)
    version = client.get_model_version(lifecycle["spec"].model_name, model_meta["model_version"])
    assert version.run_id == run.info.run_id
    assert model_meta["mlflow_model_version"].endswith(f"/versions/{version.version}")
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["loan_default_training_set"]
    features_meta = latest_metadata(instance, "features", day)
    assert Path(features_meta["offline_file"]).is_file()


def test_online_features_match_training_set_row(lifecycle):
    spec = lifecycle["spec"]
    day = lifecycle["summary"]["runs"][-1]["partition"]
    offline = FeastResource().offline_data_dir / spec.name / f"{day}.parquet"  # the newest day
    latest = pd.read_parquet(offline).sort_values(spec.timestamp).groupby(spec.entity_key).tail(1)
    sample = latest.tail(25)
    online = FeastResource().online_features(
        [{spec.entity_key: key} for key in sample[spec.entity_key]], feature_refs(spec)
    )
    merged = sample.merge(online, on=spec.entity_key, suffixes=("_offline", "_online"))
    assert len(merged) == len(sample)
    for feature in spec.feature_names:
        pd.testing.assert_series_equal(
            merged[f"{feature}_offline"].reset_index(drop=True),
            merged[f"{feature}_online"].reset_index(drop=True),
            check_names=False,
            check_dtype=False,
        )
