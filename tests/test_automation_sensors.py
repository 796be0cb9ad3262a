"""Switching the sensors on over existing history, and the run queue that throttles bursts
(issue 18). The real daemon runs the same scenario in tests/integration/test_daemon.py."""

import json
import os
import time
from datetime import date, timedelta

import pytest
import yaml
from dagster import AssetMaterialization, DagsterInstance, build_sensor_context

from mlops_assets.demo_data import write_demo_data
from mlops_assets.keys import NEW_DATA_SENSOR, asset_key, scoped_name
from mlops_assets.pipeline import build_definitions, build_jobs
from mlops_assets.spec import load_spec
from mlops_resources.instance import (
    CHAMPION_POOL,
    DAGSTER_YAML,
    FEAST_POOL,
    MAX_CONCURRENT_RUNS,
    PIPELINE_TAG,
    POOL_LIMIT,
    write_instance_yaml,
)

FIRST = date(2024, 2, 1)
DAYS = [FIRST + timedelta(days=i) for i in range(6)]  # files for six days
PROCESSED = DAYS[1:4]  # raw_data materialized for the 2nd to 4th


@pytest.fixture
def history(home):
    """Six source files; the instance has processed three of them (after they were written)."""
    spec = load_spec()
    files = write_demo_data(start=FIRST, days=len(DAYS), rows_per_day=20)
    an_hour_ago = time.time() - 3600
    for path in files:
        os.utime(path, (an_hour_ago, an_hour_ago))
    instance = DagsterInstance.ephemeral()
    for day in PROCESSED:
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=asset_key(spec, "raw_data"), partition=day.isoformat())
        )
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, NEW_DATA_SENSOR))
    return {"spec": spec, "files": files, "instance": instance, "sensor": sensor, "defs": defs}


def tick(history, cursor=None):
    with build_sensor_context(
        instance=history["instance"], cursor=cursor, definitions=history["defs"]
    ) as context:
        return history["sensor"].evaluate_tick(context)


def requested_days(data) -> list[str]:
    return [r.partition_key for r in data.run_requests or [] if r.job_name.endswith("__daily")]


def test_first_tick_does_not_rerun_processed_days(history):
    """Processed days whose file has not changed since are seen; a processed day whose file
    changed afterwards runs again; an older day never processed is history; later days are new."""
    changed = history["files"][2]  # DAYS[2], processed, then its file is rewritten
    os.utime(changed, None)
    data = tick(history)
    assert requested_days(data) == [DAYS[2].isoformat(), DAYS[4].isoformat(), DAYS[5].isoformat()]
    cursor = json.loads(data.cursor)
    assert str(history["files"][0]) in cursor  # DAYS[0]: history, seen
    assert str(history["files"][1]) in cursor  # DAYS[1]: processed, unchanged
    # The next tick starts from the cursor: nothing is requested twice.
    assert requested_days(tick(history, data.cursor)) == []


def test_a_skipped_first_tick_stores_the_cursor_it_seeded(history):
    for day in DAYS[4:]:
        history["instance"].report_runless_asset_event(
            AssetMaterialization(
                asset_key=asset_key(history["spec"], "raw_data"), partition=day.isoformat()
            )
        )
    data = tick(history)
    assert data.skip_message and not data.run_requests
    assert sorted(json.loads(data.cursor)) == sorted(str(p) for p in history["files"])


def test_a_fresh_instance_runs_every_day(home):
    """Nothing processed yet: every file is new, as before."""
    spec = load_spec()
    write_demo_data(start=FIRST, days=3, rows_per_day=20)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, NEW_DATA_SENSOR))
    with build_sensor_context(instance=DagsterInstance.ephemeral(), definitions=defs) as context:
        data = sensor.evaluate_tick(context)
    assert requested_days(data) == [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]


def test_every_job_of_a_pipeline_carries_the_queue_tag():
    spec = load_spec()
    for job in build_jobs(spec).values():
        assert job.tags[PIPELINE_TAG] == spec.name, job.name


def test_the_instance_yaml_queues_runs_one_per_pipeline(tmp_path):
    from dagster._core.run_coordinator import QueuedRunCoordinator

    path = write_instance_yaml(tmp_path)
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == MAX_CONCURRENT_RUNS
        assert queue.tag_concurrency_limits == [
            {"key": PIPELINE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == POOL_LIMIT == 1
        assert pools.pool_granularity.value == "run"  # no op slot a killed CLI run could keep
        assert queue.should_block_op_concurrency_limited_runs
    finally:
        instance.dispose()
    assert yaml.safe_load(path.read_text())["telemetry"] == {"enabled": False}


def test_steps_that_must_be_serial_declare_their_pools():
    """Feast registry writes and champion alias moves are in the pools the instance limits."""
    from mlops_assets.features import FEAST_WRITE_POOL
    from mlops_assets.pipeline import build_assets
    from mlops_assets.promotion import build_rollback_job

    spec = load_spec()
    pools = {a.key.path[-1]: a.op.pool for a in build_assets(spec) if hasattr(a, "op")}
    assert FEAST_WRITE_POOL == FEAST_POOL
    assert pools["features"] == FEAST_POOL
    assert pools["model_promotion"] == CHAMPION_POOL
    assert {node.definition.pool for node in build_rollback_job(spec).nodes} == {CHAMPION_POOL}


def test_the_instance_yaml_is_upgraded_only_when_the_suite_wrote_it(tmp_path):
    path = tmp_path / "dagster.yaml"
    path.write_text("# Written by mlops_assets on first use: SQLite storage\ntelemetry:\n")
    write_instance_yaml(tmp_path)
    assert path.read_text() == DAGSTER_YAML  # an older suite's file gets the run queue
    own = "# my instance\nrun_coordinator:\n  module: dagster\n  class: DefaultRunCoordinator\n"
    path.write_text(own)
    write_instance_yaml(tmp_path)
    assert path.read_text() == own  # someone else's is left alone
