"""Bring your own dataset: a small CSV and a spec written by the test run end to end."""

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_assets.features import feast_definitions, feature_refs, write_offline_partition
from mlops_assets.keys import DAILY_JOB, asset_key, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource, MissingFeatureRows
from mlops_resources.mlflow_tracking import MLflowResource
from tests.conftest import run_cli


def write_house_prices(path, days: int = 6, rows: int = 80) -> None:
    rng = np.random.default_rng(3)
    frames = []
    for day in range(days):
        size = rng.uniform(40, 200, rows)
        rooms = rng.integers(1, 6, rows)
        city = rng.choice(["lyon", "nantes", "lille"], rows)
        price = 2000 * size + 15000 * rooms + np.where(city == "lyon", 40000, 0)
        frames.append(
            pd.DataFrame(
                {
                    "house": np.arange(rows) + day * 1000,  # integer keys become strings
                    "listed_at": [
                        f"2025-03-{day + 1:02d}T{h:02d}:{m:02d}:00Z"
                        for h, m in zip(
                            rng.integers(0, 24, rows), rng.integers(0, 60, rows), strict=True
                        )
                    ],
                    "size_m2": size.round(1),
                    "rooms": rooms,
                    "city": city,
                    "price": price + rng.normal(0, 10000, rows),
                }
            )
        )
    pd.concat(frames).to_csv(path, index=False)


def write_house_spec(tmp_path):
    """houses.csv (six days from 2025-03-01) and houses.yaml, a regression spec reading it."""
    write_house_prices(tmp_path / "houses.csv")
    spec = {
        "name": "house_prices",
        "source": {"path": "houses.csv"},  # one file, relative to the spec; rows kept by day
        "entity_key": "house",
        "timestamp": "listed_at",
        "label": "price",
        "task": "regression",
        "partitions": {"start": "2025-03-01", "end": "2025-03-07"},
        "features": [
            {"name": "size_m2", "type": "numeric", "min": 10, "max": 1000},
            {"name": "rooms", "type": "numeric", "min": 1},
            {"name": "city", "type": "categorical", "allowed_values": ["lyon", "nantes", "lille"]},
        ],
        "model": {"kind": "linear", "training_window_days": 3, "holdout_days": 1},
        "gate": {"value_thresholds": {"r2": {"min": 0.5}}},
    }
    spec_path = tmp_path / "houses.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path


def house_day(tmp_path, day: date) -> pd.DataFrame:
    """One day of houses.csv typed as validated_data types it (string keys, UTC times)."""
    df = pd.read_csv(tmp_path / "houses.csv", dtype={"house": str})
    df["listed_at"] = pd.to_datetime(df["listed_at"], utc=True)
    df[["size_m2", "rooms"]] = df[["size_m2", "rooms"]].astype(float)
    return df[df["listed_at"].dt.date == day].reset_index(drop=True)


def test_daily_job_writes_features_before_scoring(home, tmp_path):
    spec = load_spec(write_house_spec(tmp_path))
    graph = build_definitions(spec).resolve_job_def(scoped_name(spec, DAILY_JOB)).asset_layer
    parents = graph.asset_graph.get(asset_key(spec, "batch_predictions")).parent_keys
    assert asset_key(spec, "features") in parents


@pytest.mark.parametrize("offline_store", ["duckdb", "file"])
def test_join_without_feature_rows_names_source_and_keys(home, tmp_path, offline_store):
    """Keys without feature rows: Feast's file (dask) join fails once the source has several
    files and its DuckDB join (the default) returns nulls; FeastResource turns both into an
    error naming the source, key column and keys."""
    spec = load_spec(write_house_spec(tmp_path))
    feast = FeastResource(offline_store={"type": offline_store})
    for day in (date(2025, 3, 1), date(2025, 3, 2)):
        write_offline_partition(spec, feast, day, house_day(tmp_path, day))
    feast.apply(feast_definitions(spec, feast))
    third = house_day(tmp_path, date(2025, 3, 3))

    with pytest.raises(MissingFeatureRows, match=r"80 of 80 entity rows .*\['house'\].*'2000'"):
        feast.historical_features(third[["house", "listed_at"]], feature_refs(spec))

    write_offline_partition(spec, feast, date(2025, 3, 3), third)
    joined = feast.historical_features(third[["house", "listed_at"]], feature_refs(spec))
    expected = third.set_index("house").loc[joined["house"], "size_m2"].to_numpy()
    assert np.array_equal(joined["size_m2"].to_numpy(), expected)


def test_own_csv_and_spec_run_end_to_end(home, tmp_path):
    spec_path = write_house_spec(tmp_path)
    # Warm-up: 3 ingest days (a window of delivered labels: 3 days + 1 day's delay - 1) and 2
    # lifecycle days (03-01..03-05); the sensors then drive 03-06.
    code, stdout = run_cli(
        "demo", "--json", "--config", str(spec_path), "--train-days", "2", "--monitor-days", "1"
    )
    summary = json.loads(stdout)

    assert code == 0, summary
    assert [r["job"] for r in summary["runs"]] == ["ingest"] * 3 + ["lifecycle"] * 2
    assert all(r["raw_data_rows"] == 80 for r in summary["runs"])
    trained = summary["runs"][3]
    assert trained["model_metrics"]["r2"] > 0.5
    assert trained["gate"]["blessed"] and trained["gate"]["champion_moved"]
    assert trained["batch_predictions_rows"] == 80
    assert MLflowResource().champion("house_prices_model") == summary["champion_version"]
    assert (home / "feast" / "offline" / "house_prices" / "2025-03-05.parquet").is_file()

    # Each monitored day's houses are new keys: `daily` writes the day's features to Feast
    # before batch_predictions joins them, and the champion scores them on those features.
    houses = pd.read_csv(tmp_path / "houses.csv", dtype={"house": str}).set_index("house")
    assert [d["day"] for d in summary["days"]] == ["2025-03-06"]
    for day in summary["days"]:
        (daily,) = [r for r in day["runs"] if r["job"] == "daily"]
        assert daily["success"] and daily["partition"] == day["day"], daily
        assert daily["batch_predictions_rows"] == 80
        stored = pd.read_parquet(
            home / "storage" / "house_prices" / "batch_predictions" / f"{day['day']}.parquet"
        )
        assert set(stored["model_version"]) == {daily["drift"]["model_version"]}
        price = houses.loc[stored["house"], "price"].to_numpy()
        residual = ((price - stored["prediction"].to_numpy()) ** 2).sum()
        assert 1 - residual / ((price - price.mean()) ** 2).sum() > 0.5  # r2 on the day's labels
