"""The embedded online store of entity rows (mlops_resources/feast_entity_rows.py) serves what
Feast's own sqlite store serves: real Feast, real sqlite files, one store written each way with
the same frames, read back with Feast's get_online_features."""

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast.online_response import TIMESTAMP_POSTFIX

from mlops_resources.feast_store import ENTITY_ROW_STORE, FeastResource


@pytest.fixture(params=["UTC", "America/New_York"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Feast's sqlite adapter reads naive UTC times as local time: both zones must serve the
    same."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def stores(root: Path, **fields: object) -> dict[str, FeastResource]:
    """The same Feast project twice: entity rows, and Feast's stock sqlite store."""
    return {
        name: FeastResource(
            repo_path=str(root / name), project="probe", online_bulk_write=bulk, **fields
        )
        for name, bulk in (("bulk", True), ("stock", False))
    }


def definitions(root: Path, features: dict[str, object], keys: dict[str, object]) -> list:
    from feast import Entity, FeatureView, Field, FileSource

    source_path = root / "source.parquet"
    pd.DataFrame({"ts": pd.to_datetime(["2024-01-01"], utc=True)}).to_parquet(source_path)
    entities = [
        Entity(name=k, join_keys=[k], value_type=dtype.to_value_type()) for k, dtype in keys.items()
    ]
    view = FeatureView(
        name="probe_view",
        entities=entities,
        ttl=timedelta(days=3650),
        schema=[Field(name=name, dtype=dtype) for name, dtype in {**keys, **features}.items()],
        source=FileSource(path=str(source_path), timestamp_field="ts"),
        online=True,
    )
    return [*entities, view]


def tables(feast: FeastResource) -> dict[str, int]:
    """Rows of each table in the store's sqlite file."""
    with sqlite3.connect(feast.feast_online_store_config()["path"]) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def online(feast: FeastResource, frame: pd.DataFrame, keys: list[str], refs: list[str]) -> dict:
    """Feast's answer for every key of `frame` and one unknown key, with event timestamps."""
    rows = [*frame[keys].drop_duplicates().to_dict("records"), {k: frame[k].iloc[0] for k in keys}]
    rows[-1][keys[0]] = "never-written" if frame[keys[0]].dtype == object else -7
    response = feast.store().get_online_features(features=refs, entity_rows=rows)
    return response.to_dict(include_event_timestamps=True)


def values_and_times(answer: dict) -> tuple[dict, dict]:
    """A to_dict answer split into feature values and event timestamps (seconds)."""
    times = {k: v for k, v in answer.items() if k.endswith(TIMESTAMP_POSTFIX)}
    return {k: v for k, v in answer.items() if k not in times}, times


def newest_seconds(frame: pd.DataFrame, keys: list[str]) -> list[int]:
    """The event time (whole seconds) of each key's last row in `frame`, as `online` asks."""
    last = frame.drop_duplicates(keys, keep="last").set_index(keys)["ts"]
    wanted = frame[keys].drop_duplicates()
    stamps = last.loc[pd.MultiIndex.from_frame(wanted) if len(keys) > 1 else wanted[keys[0]]]
    return [*(stamps.astype("int64") // 10**9).tolist(), 0]  # 0: the unknown key


def typed_frame(rows: int, seed: int, stamps: list[str]) -> pd.DataFrame:
    """Edge values of every vectorized dtype, nulls, repeated keys, then random rows."""
    rng = np.random.default_rng(seed)
    edge_f64 = [0.0, -0.0, 1e308, -1e-308, 5e-324, np.inf, -np.inf, np.nan, 0.1, 1e16, 2.5]
    edge_f32 = [0.1, 1e39, 3.4028235e38, 1e-46, np.nan, -0.0, 7.1e-46, -1e39, 1.0, 3.0, 0.0]
    edge_i64 = [0, -1, 2**53 + 1, -(2**63), 127, 128, 300, 2**35, None, 5, -300]  # floats here
    edge_i32 = [-(2**31), 2**31 - 1, -1, 0, None, 127, 128, 16384, -5, 7, 1]
    edge_str = ["", "a", "é", "日本", "x" * 200, None, "it's", "a", "b", "c", "d"]
    edge_bool = [True, False, None, True, True, False, None, False, True, False, True]
    n = len(edge_f64)
    with np.errstate(over="ignore"):  # 1e39 and -1e39 are inf as float32
        native_f32 = np.array(edge_f32 + list(rng.normal(0, 1, rows)), dtype=np.float32)
    keys = ["k0", "k1", "k2", "ключ", "k4", "k5", "k6", "k0", "k8", "k9", "k10"]
    frame = pd.DataFrame(
        {
            "customer_id": keys + [f"c{i % (rows // 2)}" for i in range(rows)],
            "ts": pd.to_datetime(stamps[:n] + [stamps[0]] * rows, utc=True, format="ISO8601")
            + pd.to_timedelta(np.r_[np.zeros(n), rng.integers(0, 10**15, rows)], unit="ns"),
            "f64": edge_f64 + list(rng.normal(0, 1e6, rows)),
            "f32": edge_f32 + list(rng.normal(0, 1e3, rows)),
            "f32_native": native_f32,
            "i64": pd.array(edge_i64 + list(rng.integers(-(2**62), 2**62, rows)), dtype="Int64"),
            "i64_dense": np.r_[[0, -1, 2**63 - 1, -(2**63)] * 3, rng.integers(-9, 9, rows)][
                : n + rows
            ],
            "i32": pd.array(edge_i32 + list(rng.integers(-(2**31), 2**31, rows)), dtype="Int32"),
            "name": edge_str + [f"v{x}" for x in rng.integers(0, 50, rows)],
            "flag": pd.array(edge_bool + list(rng.random(rows) < 0.5), dtype="boolean"),
            "flag_dense": np.r_[[True, False] * 6, rng.random(rows) < 0.5][: n + rows],
        }
    )
    frame.loc[n + 3, "name"] = None
    frame.loc[n + 4, "f64"] = np.nan
    return frame


def test_the_default_sqlite_store_has_entity_rows_and_redis_is_untouched(tmp_path: Path):
    default = FeastResource(repo_path=str(tmp_path))
    provider = default.store()._get_provider()
    assert type(provider).__name__ == "EntityRowProvider"
    assert type(provider.online_store).__name__ == "EntityRowSqliteOnlineStore"
    assert default.online_store_config()["type"] == "sqlite"  # what the assets report
    assert default.feast_online_store_config()["type"] == ENTITY_ROW_STORE
    stock = FeastResource(repo_path=str(tmp_path), online_bulk_write=False)
    assert stock.feast_online_store_config()["type"] == "sqlite"
    redis = {"type": "redis", "connection_string": "redis.internal:6379"}
    assert FeastResource(online_store=redis).feast_online_store_config() == redis


@pytest.mark.parametrize("keys", ["string", "int_and_string"])
def test_every_dtype_serves_what_feast_serves(tmp_path: Path, local_zone: str, keys: str):
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    from mlops_resources.feast_entity_rows import encode_entity_rows

    features = {
        "f64": Float64,
        "f32": Float32,
        "f32_native": Float32,
        "i64": Int64,
        "i64_dense": Int64,
        "i32": Int32,
        "name": String,
        "flag": Bool,
        "flag_dense": Bool,
    }
    key_types = {"customer_id": String} | ({"branch": Int64} if keys != "string" else {})
    stamps = [
        "2024-01-01 00:00:00.999999999",
        "1969-12-31 23:59:59.5",
        "2024-11-03 01:30:00.25",  # a repeated local hour in New York
        "2024-03-10 02:30:00",  # a skipped local hour in New York
        "2200-01-01 00:00:00.999999",
        "2024-06-01 12:00:00",
        "1970-01-01 00:00:00",
        "2024-01-01 00:00:01",
        "2024-01-01 00:00:02.000001",
        "2030-07-04 04:05:06.789",
        "2024-02-29 23:59:59.999999",
    ]
    first = typed_frame(400, seed=1, stamps=stamps)
    # the same keys again, older and newer, other values and nulls: both stores keep the last
    # write whatever its timestamp
    second = typed_frame(400, seed=2, stamps=["2000-01-01"] * 11)
    second.loc[:5, "f64"] = np.nan
    for frame in (first, second):
        if keys != "string":
            frame["branch"] = np.arange(len(frame), dtype=np.int64) % 3 - 1
    feast = stores(tmp_path)
    refs = [f"probe_view:{name}" for name in features]
    for resource in feast.values():
        resource.apply(definitions(tmp_path, features, key_types))
    entity_rows = feast["bulk"].store()
    view = entity_rows.get_feature_view("probe_view")
    assert encode_entity_rows(entity_rows.config, view, first) is not None  # not Feast's path
    served = []
    written = pd.DataFrame()
    for frame in (first, second):
        for resource in feast.values():
            resource.store().write_to_online_store("probe_view", df=frame)
        written = pd.concat([written, frame], ignore_index=True)
        entities = len(frame[list(key_types)].drop_duplicates())
        assert tables(feast["bulk"]) == {"probe_probe_view__entity_rows": entities}
        answers = [online(feast[name], frame, list(key_types), refs) for name in ("bulk", "stock")]
        values, times = values_and_times(answers[0])
        assert values == values_and_times(answers[1])[0]
        # the event time of each entity's last write, to the second (Feast's sqlite store
        # shifts times in a local hour that does not exist or repeats)
        newest = newest_seconds(written, list(key_types))
        assert all(times[f"{name}{TIMESTAMP_POSTFIX}"] == newest for name in features)
        served.append(values)
    assert served[0]["f64"][1] == 0.0 and served[1]["f64"][1] is None  # the older row's null
    assert served[0]["name"][5] is None and served[0]["flag"][2] is None
    assert all(served[0][name][-1] is None for name in features)  # the unknown key


def test_a_dtype_it_does_not_encode_goes_through_feast_row_by_row(tmp_path: Path):
    from feast.types import Array, Float64, Int64, String, UnixTimestamp

    from mlops_resources.feast_entity_rows import encode_entity_rows

    features = {"x": Float64, "seen": UnixTimestamp, "tags": Array(Int64)}
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True),
            "x": [1.5, np.nan, -2.0],
            "seen": pd.to_datetime(["2023-05-01", "2023-05-02", "2023-05-03"], utc=True),
            "tags": [[1, 2], [], [3]],
        }
    )
    feast = stores(tmp_path)
    for resource in feast.values():
        resource.apply(definitions(tmp_path, features, {"customer_id": String}))
        resource.store().write_to_online_store("probe_view", df=frame)
    entity_rows = feast["bulk"].store()
    view = entity_rows.get_feature_view("probe_view")
    assert encode_entity_rows(entity_rows.config, view, frame) is None
    assert tables(feast["bulk"]) == {"probe_probe_view__entity_rows": 3}
    refs = [f"probe_view:{name}" for name in features]
    answers = [online(feast[name], frame, ["customer_id"], refs) for name in ("bulk", "stock")]
    assert answers[0] == answers[1]
    assert answers[0]["tags"][:3] == [[1, 2], [], [3]]


def test_write_online_and_materialize_of_the_demo_spec_serve_what_feast_serves(
    home: Path, tmp_path: Path
):
    """The suite's own view (spec features as Float64 / String) through FeastResource.write_online
    in several batches, over a day already written once; then Feast's materialize (row by
    row through online_write_batch) of the same days into fresh stores."""
    from mlops_assets.demo_data import DEMO_START, write_demo_data
    from mlops_assets.features import (
        feast_definitions,
        feature_refs,
        feature_view_name,
        write_offline_partition,
    )
    from mlops_assets.spec import load_spec

    spec = load_spec()
    paths = write_demo_data(start=DEMO_START, days=2, rows_per_day=600)
    days = [pd.read_parquet(path) for path in paths]
    frame = pd.concat(days)
    refs = feature_refs(spec)
    for how in ("write_online", "materialize"):
        feast = stores(tmp_path / how, online_write_batch_rows=250)
        for resource in feast.values():
            resource.apply(feast_definitions(spec, resource))
            if how == "write_online":
                for day in days:
                    resource.write_online(feature_view_name(spec), day, [spec.entity_key])
            else:
                for day in days:
                    write_offline_partition(spec, resource, day[spec.timestamp].min().date(), day)
                start, end = frame[spec.timestamp].min(), frame[spec.timestamp].max()
                view = feature_view_name(spec)
                resource.materialize(start, end + pd.Timedelta(seconds=1), [view])
        answers = [online(feast[n], frame, [spec.entity_key], refs) for n in ("bulk", "stock")]
        assert values_and_times(answers[0])[0] == values_and_times(answers[1])[0]
        assert sum(v is not None for v in answers[0][spec.feature_names[0]]) >= 600


def test_a_store_of_feasts_layout_is_moved_into_entity_rows_on_apply(home: Path, tmp_path: Path):
    """An online.db written by Feast's own sqlite store (as before this store existed) serves
    the same answers once the suite's store applies the view, and Feast's table is gone."""
    from mlops_assets.demo_data import DEMO_START, write_demo_data
    from mlops_assets.features import feast_definitions, feature_refs, feature_view_name
    from mlops_assets.spec import load_spec

    spec = load_spec()
    frame = pd.read_parquet(write_demo_data(start=DEMO_START, days=1, rows_per_day=300)[0])
    refs = feature_refs(spec)
    old = FeastResource(repo_path=str(tmp_path), online_bulk_write=False)
    old.apply(feast_definitions(spec, old))
    old.write_online(feature_view_name(spec), frame, [spec.entity_key])
    before = online(old, frame, [spec.entity_key], refs)
    table = f"{old.project}_{feature_view_name(spec)}"
    assert set(tables(old)) == {table}
    new = FeastResource(repo_path=str(tmp_path))
    new.apply(feast_definitions(spec, new))
    entities = frame[spec.entity_key].nunique()
    assert tables(new) == {f"{table}__entity_rows": entities}
    assert online(new, frame, [spec.entity_key], refs) == before


@pytest.mark.parametrize("keys", [["k"], ["k", "branch"]])
def test_newest_per_entity_is_what_pandas_sorting_and_dropping_gives(keys: list[str]):
    """The Arrow-sorted newest row per entity equals pandas' stable sort by time, last row
    per key and sort by key, ties in time included (the later row wins)."""
    from mlops_resources.feast_store import newest_per_entity

    rng = np.random.default_rng(3)
    rows = 20_000
    frame = pd.DataFrame(
        {
            "k": rng.choice([f"c{i}" for i in range(3_000)] + ["é", "日本", ""], rows),
            "branch": rng.integers(-2, 2, rows),
            "ts": pd.to_datetime(rng.integers(0, 50, rows), unit="s", utc=True),
            "row": np.arange(rows),
        }
    )
    expected = frame.sort_values("ts", kind="stable").drop_duplicates(keys, keep="last")
    expected = expected.sort_values(keys, kind="stable")
    pd.testing.assert_frame_equal(newest_per_entity(frame, keys, "ts"), expected)
    assert newest_per_entity(frame.iloc[:0], keys, "ts").empty
