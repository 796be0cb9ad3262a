"""A day (or a training window) larger than the step memory bound fails its step with a message
naming the partition, its size and the setting, before it is read."""

from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, Failure

from mlops_assets.cli import failed_steps
from mlops_assets.demo_data import DEMO_START, write_demo_data
from mlops_assets.keys import INGEST_JOB, scoped_name
from mlops_assets.memory_bound import MAX_STEP_DATA_VAR, MB, file_estimate, require_fits
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from tests.conftest import write_spec


def test_a_day_over_the_bound_fails_raw_data_naming_partition_size_and_setting(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write_demo_data(start=DEMO_START, days=1, rows_per_day=2000)
    monkeypatch.setenv(MAX_STEP_DATA_VAR, "0.2")
    spec = load_spec(write_spec(tmp_path / "spec.yaml"))
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, INGEST_JOB))
    result = job.execute_in_process(
        partition_key=DEMO_START.isoformat(),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = failed_steps(result.all_events)
    assert failure["step"] == "loan_default__raw_data"
    message = failure["error"]
    assert f"partition {DEMO_START.isoformat()}: the day's source files hold 2,000 rows" in message
    assert "MB in memory, over the step memory bound of 0.2 MB" in message
    assert f"({MAX_STEP_DATA_VAR}=0.2)" in message and f"Raise {MAX_STEP_DATA_VAR}" in message
    assert not result.get_asset_materialization_events()


def test_estimate_is_close_to_pandas_and_a_window_is_bounded_as_a_whole(
    home: Path, monkeypatch: pytest.MonkeyPatch
):
    files = write_demo_data(start=DEMO_START, days=2, rows_per_day=3000)
    actual = pd.read_parquet(files[0]).memory_usage(deep=True, index=False).sum()
    rows, estimate = file_estimate(files[0])
    assert rows == 3000
    assert 0.8 * actual <= estimate <= 1.2 * actual
    monkeypatch.setenv(MAX_STEP_DATA_VAR, str(1.5 * estimate / MB))
    assert require_fits("one day", "2024-01-01", files[:1])[0] == 3000
    with pytest.raises(Failure, match=r"partition 2024-01-02: the window's files hold 6,000 rows"):
        require_fits("the window's files", "2024-01-02", files)


def test_a_csv_source_without_a_csv_suffix_is_bounded_too(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`source.format: csv` decides how a file is estimated, not its suffix (a .txt file was
    estimated as Parquet, failed, and counted as empty)."""
    data = tmp_path / "data"
    write_demo_data(data, start=DEMO_START, days=1, rows_per_day=2000)
    day = DEMO_START.isoformat()
    pd.read_parquet(data / f"loans_{day}.parquet").to_csv(data / f"loans_{day}.txt", index=False)
    monkeypatch.setenv(MAX_STEP_DATA_VAR, "0.2")
    source = {"path": str(data / "loans_{date}.txt"), "format": "csv"}
    spec = load_spec(write_spec(tmp_path / "spec.yaml", source=source))
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, INGEST_JOB))
    result = job.execute_in_process(
        partition_key=day, instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    (failure,) = failed_steps(result.all_events)
    assert failure["step"] == "loan_default__raw_data"
    assert "the day's source files hold" in failure["error"], failure["error"]
