"""The online store write is its own asset, present only when the spec asks for online
features, never upstream of scoring or drift, and it keeps the newest row of each entity."""

from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance

from mlops_assets.demo_data import DEMO_START, demo_data_dir, write_demo_data
from mlops_assets.features import feature_refs
from mlops_assets.keys import DAILY_JOB, INGEST_JOB, LIFECYCLE_JOB, asset_key, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource
from tests.conftest import write_spec


def job_assets(defs, spec, job: str) -> set[str]:
    graph = defs.resolve_job_def(scoped_name(spec, job)).asset_layer.asset_graph
    return {key.path[-1] for key in graph.get_all_asset_keys() if graph.get(key).is_executable}


@pytest.mark.parametrize("online", [False, True])
def test_online_features_only_when_asked_and_never_upstream_of_scoring(
    home: Path, tmp_path: Path, online: bool
):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", online_features=online))
    defs = build_definitions(spec)
    graph = defs.resolve_asset_graph()
    key = asset_key(spec, "online_features")
    assert graph.has(key) is online
    for job in (INGEST_JOB, DAILY_JOB, LIFECYCLE_JOB):
        assert ("online_features" in job_assets(defs, spec, job)) is online
    if online:
        assert graph.get(key).parent_keys == {asset_key(spec, "features")}
        for downstream in ("batch_predictions", "drift_report", "training_set"):
            ancestors = graph.upstream_key_iterator(asset_key(spec, downstream))
            assert key not in set(ancestors)


def test_online_features_hold_the_newest_row_of_each_entity(home: Path, tmp_path: Path):
    """A day where five customers apply twice: the online store serves their later row, and
    every other customer's only row; batch_predictions-side assets do not need it."""
    day = DEMO_START
    (path,) = write_demo_data(start=day, days=1, rows_per_day=300)
    rows = pd.read_parquet(path)
    again = rows.head(5).copy()
    again["event_timestamp"] += pd.Timedelta(hours=1)
    again["income"] = [111.0, 222.0, 333.0, 444.0, 555.0]
    pd.concat([rows, again], ignore_index=True).to_parquet(path, index=False)
    assert path.parent == demo_data_dir()

    spec = load_spec(write_spec(tmp_path / "spec.yaml", online_features=True))
    defs = build_definitions(spec)
    job = defs.resolve_job_def(scoped_name(spec, INGEST_JOB))
    result = job.execute_in_process(
        partition_key=day.isoformat(), instance=DagsterInstance.ephemeral()
    )
    assert result.success
    meta = {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }
    assert meta["features"]["rows_written"] == 305
    assert meta["online_features"]["rows_in_day"] == 305
    assert meta["online_features"]["entities_written"] == 300
    assert meta["online_features"]["online_store"] == "sqlite"
    assert meta["online_features"]["rows_per_second"] > 0

    keys = [{spec.entity_key: key} for key in rows[spec.entity_key].head(8)]
    online = FeastResource().online_features(keys, feature_refs(spec))
    expected = [111.0, 222.0, 333.0, 444.0, 555.0, *rows["income"].iloc[5:8]]
    assert online["income"].tolist() == pytest.approx(expected)
    assert online["region"].tolist() == rows["region"].head(8).tolist()
