"""The asset-value IO manager (mlops_resources/io_manager.py) through real `materialize` runs
and real files: tables as Parquet, plain values as JSON, a pickle only as the last resort,
atomic per-run writes, and the legacy pickles of earlier versions still loading."""

from __future__ import annotations

import math
import pickle
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetIn,
    DagsterInstance,
    DailyPartitionsDefinition,
    FilesystemIOManager,
    asset,
    materialize,
)

from mlops_assets.frames import ArrowTable
from mlops_resources.io_manager import AssetIOManager, as_json
from mlops_resources.storage import asset_io_manager

DAYS = DailyPartitionsDefinition(start_date="2024-01-01")
DAY = "2024-01-02"


def sample_frame() -> pd.DataFrame:
    """A frame with the dtypes the pipelines pass between steps."""
    return pd.DataFrame(
        {
            "loan_id": np.arange(5, dtype="int64"),
            "event_ts": pd.date_range("2024-01-02", periods=5, freq="h", tz="UTC"),
            "income": [1.5, np.nan, 3.0, 4.25, 5.0],
            "grade": pd.Categorical(["a", "b", "a", "c", "b"]),
            "purpose": ["car", "home", None, "car", "edu"],
            "default": [True, False, False, True, False],
        }
    )


def pipeline(value: Any, seen: list[Any]) -> list:
    """`upstream` returns `value`; `downstream` records what it loaded into `seen`."""

    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> Any:
        return value

    @asset(partitions_def=DAYS, key_prefix="demo", ins={"upstream": AssetIn(["demo", "upstream"])})
    def downstream(upstream: Any) -> None:
        seen.append(upstream)

    return [upstream, downstream]


def run(assets: list, base: Path, selection: list[str] | None = None) -> Any:
    result = materialize(
        assets,
        partition_key=DAY,
        resources={"io_manager": AssetIOManager(base_path=str(base))},
        selection=selection,
    )
    assert result.success
    return result


def files(base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def test_a_table_is_stored_as_parquet_and_loads_the_same(tmp_path: Path) -> None:
    frame, seen = sample_frame(), []
    result = run(pipeline(frame, seen), tmp_path)
    assert files(tmp_path) == [f"demo/upstream/{DAY}.parquet"]
    pd.testing.assert_frame_equal(seen[0], frame)
    stored = pd.read_parquet(tmp_path / "demo" / "upstream" / f"{DAY}.parquet")
    pd.testing.assert_frame_equal(stored, frame)  # readable by any Parquet reader
    metadata = result.asset_materializations_for_node("demo__upstream")[0].metadata
    assert metadata["path"].value == str(tmp_path / "demo" / "upstream" / f"{DAY}.parquet")


def test_an_input_with_columns_loads_only_those_columns(tmp_path: Path) -> None:
    """Input metadata `columns` (batch_predictions reads only the keys of validated_data): the
    Parquet file is read for those columns, in that order; a plain value refuses them."""
    frame, seen = sample_frame(), []

    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> pd.DataFrame:
        return frame

    @asset(
        partitions_def=DAYS,
        key_prefix="demo",
        ins={
            "upstream": AssetIn(["demo", "upstream"], metadata={"columns": ["event_ts", "loan_id"]})
        },
    )
    def keys_only(upstream: pd.DataFrame) -> None:
        seen.append(upstream)

    run([upstream, keys_only], tmp_path)
    pd.testing.assert_frame_equal(seen[0], frame[["event_ts", "loan_id"]])

    @asset(partitions_def=DAYS, key_prefix="demo", name="upstream")
    def plain_value() -> dict:
        return {"a": 1}

    with pytest.raises(TypeError, match="asks for a table"):
        materialize(
            [plain_value, keys_only],
            partition_key=DAY,
            resources={"io_manager": AssetIOManager(base_path=str(tmp_path))},
        )


def test_an_arrow_table_input_is_read_from_parquet_without_pandas(tmp_path: Path) -> None:
    """An input typed ArrowTable (features reads validated_data so) gets the stored Parquet as
    a pyarrow Table, whole or with its `columns`; a legacy pickled frame is converted."""
    frame, seen = sample_frame(), {}

    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> pd.DataFrame:
        return frame

    @asset(partitions_def=DAYS, key_prefix="demo", ins={"upstream": AssetIn(["demo", "upstream"])})
    def whole(upstream: ArrowTable) -> None:
        seen["whole"] = upstream

    @asset(
        partitions_def=DAYS,
        key_prefix="demo",
        ins={"upstream": AssetIn(["demo", "upstream"], metadata={"columns": ["income"]})},
    )
    def one_column(upstream: ArrowTable) -> None:
        seen["one_column"] = upstream

    run([upstream, whole, one_column], tmp_path)
    assert all(isinstance(table, pa.Table) for table in seen.values())
    pd.testing.assert_frame_equal(seen["whole"].to_pandas(), frame)
    assert seen["one_column"].column_names == ["income"]
    stored = tmp_path / "demo" / "upstream" / f"{DAY}.parquet"
    stored.unlink()
    seen.clear()
    with (tmp_path / "demo" / "upstream" / DAY).open("wb") as legacy:
        pickle.dump(frame, legacy)
    run([upstream, whole], tmp_path, selection=["demo/whole"])
    pd.testing.assert_frame_equal(seen["whole"].to_pandas(), frame)


def test_the_first_reader_in_the_same_run_gets_the_stored_frame_itself(tmp_path: Path) -> None:
    """In one in-process run the first step that loads a stored frame gets the object the
    producer returned (the file is written all the same); a second reader, and any other run,
    read the file."""
    frame, seen = sample_frame(), {}

    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> pd.DataFrame:
        return frame

    def reader(name: str) -> Any:
        @asset(
            partitions_def=DAYS,
            key_prefix="demo",
            name=name,
            ins={"upstream": AssetIn(["demo", "upstream"])},
        )
        def read(upstream: pd.DataFrame) -> None:
            seen[name] = upstream

        return read

    run([upstream, reader("first"), reader("second")], tmp_path)
    assert sorted(seen) == ["first", "second"]
    handed = [name for name, value in seen.items() if value is frame]
    assert len(handed) == 1  # exactly one reader got the object; the other read the file
    for value in seen.values():
        pd.testing.assert_frame_equal(value, frame)
    assert (tmp_path / "demo" / "upstream" / f"{DAY}.parquet").is_file()
    seen.clear()
    run([upstream, reader("first")], tmp_path, selection=["demo/first"])  # another run
    assert seen["first"] is not frame
    pd.testing.assert_frame_equal(seen["first"], frame)


def test_a_plain_dict_is_stored_as_json(tmp_path: Path) -> None:
    value = {"version": "3", "metrics": {"roc_auc": np.float64(0.8), "n": np.int64(7)}}
    value["metrics"]["log_loss"] = math.nan
    value["rules"] = [{"metric": "roc_auc", "passed": True}]
    seen: list[Any] = []
    run(pipeline(value, seen), tmp_path)
    assert files(tmp_path) == [f"demo/upstream/{DAY}.json"]
    loaded = seen[0]
    assert loaded["metrics"]["n"] == 7 and type(loaded["metrics"]["n"]) is int
    assert math.isnan(loaded["metrics"]["log_loss"])
    assert {k: v for k, v in loaded.items() if k != "metrics"} == {
        "version": "3",
        "rules": [{"metric": "roc_auc", "passed": True}],
    }


@pytest.mark.parametrize(
    "value",
    [
        {"day": date(2024, 1, 2)},  # not JSON
        {"pair": (1, 2)},  # JSON would return a list
        {1: "int key"},  # JSON would return a string key
    ],
)
def test_a_value_that_json_would_change_is_pickled_atomically(tmp_path: Path, value: Any) -> None:
    assert as_json(value) is None
    seen: list[Any] = []
    run(pipeline(value, seen), tmp_path)
    assert files(tmp_path) == [f"demo/upstream/{DAY}.pickle"]
    assert seen == [value]


def test_a_table_parquet_cannot_hold_falls_back_to_a_pickle(tmp_path: Path) -> None:
    frame, seen = pd.DataFrame({"mixed": [1, "a"]}), []  # ints and strings in one column
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            pipeline(frame, seen),
            partition_key=DAY,
            resources={"io_manager": AssetIOManager(base_path=str(tmp_path))},
            instance=instance,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert files(tmp_path) == [f"demo/upstream/{DAY}.pickle"]
    pd.testing.assert_frame_equal(seen[0], frame)
    assert any("Parquet cannot hold this table" in message for message in logs)


def test_a_new_format_replaces_the_old_file(tmp_path: Path) -> None:
    run(pipeline({"a": 1}, []), tmp_path)
    assert files(tmp_path) == [f"demo/upstream/{DAY}.json"]
    seen: list[Any] = []
    run(pipeline(sample_frame(), seen), tmp_path)
    assert files(tmp_path) == [f"demo/upstream/{DAY}.parquet"]


class Unpicklable:
    """Pickling writes some bytes, then fails: a writer that dies half-way."""

    def __reduce__(self) -> Any:
        raise RuntimeError("died half-way through the write")


def test_a_failed_write_leaves_the_previous_value_whole(tmp_path: Path) -> None:
    run(pipeline({"previous": [1, 2, 3]}, []), tmp_path)
    with pytest.raises(Exception, match="died half-way"):
        materialize(
            pipeline([sample_frame(), Unpicklable()], []),
            partition_key=DAY,
            resources={"io_manager": AssetIOManager(base_path=str(tmp_path))},
            selection=["demo/upstream"],
        )
    assert files(tmp_path) == [f"demo/upstream/{DAY}.json"]  # no .tmp left, old value intact
    seen: list[Any] = []
    run(pipeline(None, seen), tmp_path, selection=["demo/downstream"])
    assert seen == [{"previous": [1, 2, 3]}]


def test_legacy_pickles_of_earlier_versions_still_load(tmp_path: Path) -> None:
    """Values written by dagster's FilesystemIOManager (the suite before Parquet) load through
    the new IO manager; the next write of the partition replaces the pickle."""
    frame, verdict = sample_frame(), {"blessed": True, "champion_after": "2"}

    @asset(partitions_def=DAYS, key_prefix="demo")
    def upstream() -> pd.DataFrame:
        return frame

    @asset(partitions_def=DAYS, key_prefix="demo")
    def promotion() -> dict:
        return verdict

    legacy = materialize(
        [upstream, promotion],
        partition_key=DAY,
        resources={"io_manager": FilesystemIOManager(base_dir=str(tmp_path))},
    )
    assert legacy.success
    assert files(tmp_path) == [f"demo/promotion/{DAY}", f"demo/upstream/{DAY}"]
    assert pickle.loads((tmp_path / "demo" / "upstream" / DAY).read_bytes()).equals(frame)

    seen: dict[str, Any] = {}

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

    run([upstream, promotion, downstream], tmp_path, selection=["demo/downstream"])
    pd.testing.assert_frame_equal(seen["upstream"], frame)
    assert seen["promotion"] == verdict

    run([upstream, promotion, downstream], tmp_path, selection=["demo/upstream"])
    assert files(tmp_path) == [f"demo/promotion/{DAY}", f"demo/upstream/{DAY}.parquet"]


def test_a_missing_value_names_what_to_materialize(tmp_path: Path) -> None:
    result = materialize(
        pipeline(None, []),
        partition_key=DAY,
        resources={"io_manager": AssetIOManager(base_path=str(tmp_path))},
        selection=["demo/downstream"],
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = failure.to_string()
    assert "materialize the upstream asset" in text


def test_the_local_profile_writes_under_mlops_home(home: Path) -> None:
    seen: list[Any] = []
    result = materialize(
        pipeline({"ok": True}, seen),
        partition_key=DAY,
        resources={"io_manager": asset_io_manager()},
    )
    assert result.success and seen == [{"ok": True}]
    assert (home / "storage" / "demo" / "upstream" / f"{DAY}.json").is_file()


def test_a_failed_spark_table_write_leaves_the_previous_table(tmp_path: Path) -> None:
    """The spark engine's tables (SparkTableIOManager on a local warehouse) are written into a
    per-run folder and swapped in; a write that fails keeps the previous table whole."""
    from mlops_resources.spark import replace_folder

    table = tmp_path / "validated_data" / DAY

    def write(rows: str):
        def into(folder: str) -> None:
            Path(folder).mkdir(parents=True)
            (Path(folder) / "part-0.parquet").write_text(rows)
            if rows == "fails":
                raise RuntimeError("executor lost")

        return into

    replace_folder(str(table), "run-1", write("first"))
    with pytest.raises(RuntimeError, match="executor lost"):
        replace_folder(str(table), "run-2", write("fails"))
    assert (table / "part-0.parquet").read_text() == "first"
    replace_folder(str(table), "run-3", write("second"))
    assert (table / "part-0.parquet").read_text() == "second"
    assert sorted(p.name for p in table.parent.iterdir()) == [DAY]  # no .tmp / .old left
