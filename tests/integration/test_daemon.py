"""Switching the sensors on after a demo, under the real daemon (issue 18).

A new user's path: `make demo`, then `make dev` (which also writes the source files of the days
after the demo), then both sensors switched on in the UI. Here: a small demo through the CLI
(few rows, a short window, through the demo's drift day), two more days' files, both sensors
started through the instance as the UI does (`dagster sensor start`), then `dagster-daemon run`
against that DAGSTER_HOME until the two new days have run (bounded). Local profile, no servers.

It used to re-run every processed day at once (ten runs on two cores), fail one of them on
Feast's MATERIALIZING state, and roll the champion back twice from re-evaluations of old days.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from mlops_assets.demo_data import DRIFT_START, write_demo_data
from mlops_assets.keys import (
    DAILY_JOB,
    DRIFT_SENSOR,
    INGEST_JOB,
    LIFECYCLE_JOB,
    NEW_DATA_SENSOR,
    ROLLBACK_JOB,
    asset_key,
    base_name,
    scoped_name,
)
from mlops_assets.spec import DEMO_SPEC_PATH, load_spec
from mlops_resources.instance import PIPELINE_TAG
from tests.conftest import python_command, write_spec
from tests.integration.conftest import ARTIFACTS, REPO, local_env
from tests.integration.test_dev_shutdown import group_alive

ROWS = 300
WARMUP, TRAIN, STATIONARY = 6, 2, 1  # window 6 days, labels delayed 1 day
MONITOR = STATIONARY + 2  # ... the drift day and one after it
START = DRIFT_START - timedelta(days=WARMUP + TRAIN + STATIONARY)
NEW_DAYS = 2  # files that `make dev` writes after the demo's last day
DAEMON_SECONDS = 900  # three sensor ticks (60 s apart) and two daily runs; ~8 min under load
ENDED = ("SUCCESS", "FAILURE", "CANCELED")
# The module fixture (the demo, then the daemon) runs inside the first test's timeout.
pytestmark = pytest.mark.timeout(2400)


def dagster(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "dagster"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def champion(env: dict[str, str]) -> str | None:
    """The champion as the suite reads it (MLflow alias), from a process of that profile."""
    script = (
        "from mlops_assets.pipeline import build_definitions\n"
        "from mlops_assets.spec import load_spec\n"
        "from mlops_assets.story import champion_now\n"
        "spec = load_spec()\n"
        "print(champion_now(build_definitions(spec), spec))\n"
    )
    done = subprocess.run(python_command(script), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def run_table(instance, spec) -> list[dict]:
    """Every run of the instance: id, job (base name), partition, status, start and end."""
    return [
        {
            "run_id": r.dagster_run.run_id,
            "job": base_name(r.dagster_run.job_name),
            "partition": r.dagster_run.tags.get("dagster/partition"),
            "status": r.dagster_run.status.value,
            "start": r.start_time,
            "end": r.end_time,
            "pipeline": r.dagster_run.tags.get(PIPELINE_TAG),
            "run_key": r.dagster_run.tags.get("dagster/run_key"),
        }
        for r in instance.get_run_records()
    ]


@pytest.fixture(scope="module")
def switched_on(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from dagster import DagsterInstance

    root = tmp_path_factory.mktemp("daemon")
    staged = root / "staged"
    write_demo_data(
        staged, start=START, days=WARMUP + TRAIN + MONITOR + NEW_DAYS, rows_per_day=ROWS
    )
    demo = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    demo["monitoring"]["performance"].update(  # small days: metric noise is larger
        max_degradation={"roc_auc": 0.1}, rollback_margin={"roc_auc": 0.08}
    )
    demo["gate"]["value_thresholds"]["log_loss"] = {"max": 0.65}
    spec_path = write_spec(
        root / "spec.yaml",
        model={**demo["model"], "training_window_days": WARMUP, "holdout_days": 2},
        monitoring=demo["monitoring"],
        gate=demo["gate"],
    )
    env = {**local_env(root), "MLOPS_CONFIG": str(spec_path)}
    command = [sys.executable, "-m", "mlops_assets", "demo", "--json", "--config", str(spec_path)]
    command += ["--train-days", str(TRAIN), "--start", START.isoformat()]
    command += ["--monitor-days", str(MONITOR), "--replay-from", str(staged)]
    cli = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "daemon_demo.stderr.log").write_text(cli.stderr)
    assert cli.returncode == 0, cli.stderr[-3000:]
    summary = json.loads(cli.stdout)

    spec = load_spec(spec_path)
    arrived = Path(env["MLOPS_HOME"]) / "demo_data"  # the spec's source folder
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    processed = instance.get_materialized_partitions(asset_key(spec, "raw_data"))
    before = run_table(instance, spec)
    champion_before = champion(env)
    last = max(processed)
    new_days = [
        (START + timedelta(days=WARMUP + TRAIN + MONITOR + i)).isoformat() for i in range(NEW_DAYS)
    ]
    assert min(new_days) > last
    for day in new_days:  # what `make dev` writes: the files of the days after the demo
        shutil.copyfile(staged / f"loans_{day}.parquet", arrived / f"loans_{day}.parquet")

    for sensor in (NEW_DATA_SENSOR, DRIFT_SENSOR):  # as the UI's switch does
        dagster(env, "sensor", "start", "-w", "workspace.yaml", scoped_name(spec, sensor))
    log = root / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        while True:
            runs = run_table(instance, spec)
            new = [r for r in runs if r["run_id"] not in {b["run_id"] for b in before}]
            failed = [r for r in new if r["status"] in ("FAILURE", "CANCELED")]
            daily_done = {
                r["partition"] for r in new if r["job"] == DAILY_JOB and r["status"] in ENDED
            }
            busy = [r for r in new if r["status"] not in ENDED]
            if failed or (daily_done >= set(new_days) and not busy):
                break
            assert daemon.poll() is None, log.read_text()[-3000:]
            if time.monotonic() - started > DAEMON_SECONDS:
                break
            time.sleep(5)
        seconds = time.monotonic() - started
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if group_alive(daemon.pid):  # run workers the daemon launched
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
    (ARTIFACTS / "daemon.log").write_text(log.read_text())
    runs = run_table(instance, spec)
    instance.dispose()
    yield {
        "spec": spec,
        "summary": summary,
        "processed": processed,
        "new_days": new_days,
        "before": before,
        "new": [r for r in runs if r["run_id"] not in {b["run_id"] for b in before}],
        "champion_before": champion_before,
        "champion_after": champion(env),
        "seconds": seconds,
        "log": log.read_text(),
    }


def describe(runs: list[dict]) -> str:
    return "\n".join(f"{r['job']} {r['partition']} {r['status']} {r['run_key']}" for r in runs)


def test_the_demo_story_ran(switched_on):
    assert switched_on["summary"]["runs_failed"] == 0
    assert str(switched_on["summary"]["champion_version"]) == switched_on["champion_before"]


def test_no_run_fails(switched_on):
    failed = [r for r in switched_on["new"] if r["status"] in ("FAILURE", "CANCELED")]
    assert not failed, describe(failed) + "\n" + switched_on["log"][-3000:]


def test_days_already_processed_are_not_rerun(switched_on):
    rerun = [
        r
        for r in switched_on["new"]
        if r["job"] in (DAILY_JOB, INGEST_JOB, LIFECYCLE_JOB)
        and r["partition"] in switched_on["processed"]
    ]
    assert not rerun, describe(rerun)


def test_the_new_days_ran_once_each_one_run_at_a_time(switched_on):
    daily = [r for r in switched_on["new"] if r["job"] == DAILY_JOB]
    assert sorted(r["partition"] for r in daily) == switched_on["new_days"], (
        f"after {switched_on['seconds']:.0f} s:\n{describe(switched_on['new'])}\n"
        + switched_on["log"][-3000:]
    )
    # The queue starts one run of a pipeline at a time (tag limit of the instance's yaml).
    tagged = sorted(
        (r for r in switched_on["new"] if r["pipeline"] == switched_on["spec"].name),
        key=lambda r: r["start"] or float("inf"),  # a queued run has not started
    )
    for earlier, later in zip(tagged, tagged[1:], strict=False):
        assert earlier["end"] is not None, f"still running: {describe([earlier])}"
        assert later["start"] is None or later["start"] >= earlier["end"], describe(
            [earlier, later]
        )


def test_no_rollback_and_the_champion_is_unchanged(switched_on):
    rollbacks = [r for r in switched_on["new"] if r["job"] == ROLLBACK_JOB]
    assert not rollbacks, describe(rollbacks)
    assert switched_on["champion_after"] == switched_on["champion_before"]
