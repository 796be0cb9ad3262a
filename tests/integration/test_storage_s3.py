"""The asset-value IO manager on S3 (moto's server from scripts/services.sh): the same class as
local storage, Parquet and JSON objects under the production profile's prefix, and the pickles
that dagster-aws's S3PickleIOManager wrote before still loading."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pandas as pd
import pytest
from dagster import AssetIn, DailyPartitionsDefinition, asset, materialize

from mlops_resources.io_manager import AssetIOManager
from mlops_resources.storage import asset_io_manager

DAYS = DailyPartitionsDefinition(start_date="2024-01-01")
DAY = "2024-01-02"
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def bucket(services: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The services' bucket, with the S3 settings of the production profile in the
    environment (endpoint, region and credentials, as the run pods have them)."""
    for name in S3_ENV:
        monkeypatch.setenv(name, services[name])
    yield services["MLOPS_S3_BUCKET"]


def keys(bucket: str, prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"].removeprefix(prefix + "/") for o in listing.get("Contents", []))


def pipeline(table: pd.DataFrame, verdict: dict[str, Any], seen: dict[str, Any]) -> list:
    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> pd.DataFrame:
        return table

    @asset(partitions_def=DAYS, key_prefix="demo")
    def promotion() -> dict:
        return verdict

    @asset(
        partitions_def=DAYS,
        key_prefix="demo",
        ins={
            "upstream": AssetIn(["demo", "upstream"]),
            "promotion": AssetIn(["demo", "promotion"]),
        },
    )
    def downstream(upstream: pd.DataFrame, promotion: dict) -> None:
        seen.update(upstream=upstream, promotion=promotion)

    return [upstream, promotion, downstream]


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "loan_id": range(4),
            "income": [1.0, None, 3.5, 4.0],
            "grade": pd.Categorical(["a", "b", "a", "c"]),
            "event_ts": pd.date_range("2024-01-02", periods=4, freq="h", tz="UTC"),
        }
    )


def test_tables_are_parquet_objects_on_s3_and_load_back(bucket: str) -> None:
    prefix = f"it-storage-{uuid.uuid4().hex[:8]}"
    io_manager = asset_io_manager(s3_bucket=bucket, s3_prefix=prefix)
    assert isinstance(io_manager, AssetIOManager)  # one class for local and S3
    seen: dict[str, Any] = {}
    table, verdict = frame(), {"blessed": True, "metrics": {"roc_auc": 0.81}}
    result = materialize(
        pipeline(table, verdict, seen), partition_key=DAY, resources={"io_manager": io_manager}
    )
    assert result.success
    assert keys(bucket, prefix) == [f"demo/promotion/{DAY}.json", f"demo/upstream/{DAY}.parquet"]
    pd.testing.assert_frame_equal(seen["upstream"], table)
    assert seen["promotion"] == verdict
    metadata = result.asset_materializations_for_node("demo__upstream")[0].metadata
    assert metadata["path"].value == f"s3://{bucket}/{prefix}/demo/upstream/{DAY}.parquet"


def test_pickles_written_by_s3_pickle_io_manager_still_load(bucket: str) -> None:
    from dagster_aws.s3 import S3PickleIOManager

    from mlops_resources.storage import s3_resource

    prefix = f"it-legacy-{uuid.uuid4().hex[:8]}"
    table, verdict = frame(), {"blessed": False, "message": "no thresholds"}
    legacy = S3PickleIOManager(s3_resource=s3_resource(), s3_bucket=bucket, s3_prefix=prefix)
    seen: dict[str, Any] = {}
    assets = pipeline(table, verdict, seen)
    assert materialize(
        assets, partition_key=DAY, resources={"io_manager": legacy}, selection=["demo/upstream"]
    ).success
    assert materialize(
        assets, partition_key=DAY, resources={"io_manager": legacy}, selection=["demo/promotion"]
    ).success
    assert keys(bucket, prefix) == [f"demo/promotion/{DAY}", f"demo/upstream/{DAY}"]

    current = asset_io_manager(s3_bucket=bucket, s3_prefix=prefix)
    assert materialize(
        assets, partition_key=DAY, resources={"io_manager": current}, selection=["demo/downstream"]
    ).success
    pd.testing.assert_frame_equal(seen["upstream"], table)
    assert seen["promotion"] == verdict

    assert materialize(
        assets, partition_key=DAY, resources={"io_manager": current}, selection=["demo/upstream"]
    ).success  # the next write replaces the pickle
    assert keys(bucket, prefix) == [f"demo/promotion/{DAY}", f"demo/upstream/{DAY}.parquet"]


def test_a_failed_write_publishes_nothing_and_keeps_the_previous_value(bucket: str) -> None:
    """s3fs uploads what a file object holds when it is closed, even after an error: the
    value is serialized in memory before its one PUT, so a failed write leaves no object."""
    from tests.test_storage_io import Unpicklable

    prefix = f"it-failed-{uuid.uuid4().hex[:8]}"
    io_manager = asset_io_manager(s3_bucket=bucket, s3_prefix=prefix)
    seen: dict[str, Any] = {}
    previous = {"previous": [1, 2, 3]}
    assert materialize(
        pipeline(frame(), previous, seen),
        partition_key=DAY,
        resources={"io_manager": io_manager},
        selection=["demo/promotion"],
    ).success
    with pytest.raises(Exception, match="died half-way"):
        materialize(
            pipeline(frame(), {"table": frame(), "bad": Unpicklable()}, seen),
            partition_key=DAY,
            resources={"io_manager": io_manager},
            selection=["demo/promotion"],
        )
    assert keys(bucket, prefix) == [f"demo/promotion/{DAY}.json"]
    assert materialize(
        pipeline(frame(), {}, seen),
        partition_key=DAY,
        resources={"io_manager": io_manager},
        selection=["demo/upstream", "demo/downstream"],
    ).success
    assert seen["promotion"] == previous
