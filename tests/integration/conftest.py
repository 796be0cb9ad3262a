"""The production profile against real servers on loopback (scripts/services.sh).

`make test-integration` installs what these tests need, starts the servers, runs them and stops
everything. Run by hand: `scripts/services.sh start`, then
`.venv/bin/pytest tests/integration`, then `scripts/services.sh stop`.

One session state: a fresh Dagster database on the PostgreSQL server, a spec with a unique name
(so its MLflow model, Feast views and S3 keys are new), the lifecycle run through the CLI, then
one bad partition. Every test reads that state.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlops_assets.demo_data import write_demo_data
from mlops_assets.spec import DEMO_SPEC_PATH, load_spec
from tests.conftest import (
    TEST_ROWS_PER_DAY,
    TEST_TRAIN_DAYS,
    TEST_WARMUP_DAYS,
    TEST_WINDOW_DAYS,
    write_spec,
)

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scripts" / "services.sh"
ARTIFACTS = REPO / "test-artifacts" / "integration"
# Set by scripts/integration.sh when the system packages cannot be installed here.
UNAVAILABLE_ENV = "MLOPS_INTEGRATION_UNAVAILABLE"
# The secrets in the env file: none of them may show up in logs, metadata or MLflow.
SECRET_VARS = ("MLOPS_PG_PASSWORD", "MLOPS_REDIS_PASSWORD", "AWS_SECRET_ACCESS_KEY")
MONITOR_DAYS = 1  # one day driven by the sensors after training (the demo's story, shortened)


def local_env(root: Path) -> dict[str, str]:
    """The local profile in `root`, whatever profile this process was switched to."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLOPS_", "MLFLOW_", "DAGSTER_", "AWS_"))
    }
    env |= {"MLOPS_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "home" / "dagster")}
    return env


@contextmanager
def local_profile(root: Path) -> Iterator[None]:
    """This process on the local profile in `root` (the session's production settings set
    aside), and its whole environment as it was afterwards: MLflow's set_tracking_uri writes
    MLFLOW_TRACKING_URI there, which later tests of the production profile read."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(local_env(root))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines that scripts/services.sh wrote."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = value
    return values


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """The servers' settings (env file of scripts/services.sh); skip when they cannot run."""
    if os.environ.get(UNAVAILABLE_ENV):
        pytest.skip(f"integration servers unavailable: {os.environ[UNAVAILABLE_ENV]}")
    env_file = Path(
        subprocess.run(
            ["bash", str(SERVICES), "env"], capture_output=True, text=True
        ).stdout.strip()
    )
    if not env_file.is_file():
        pytest.skip(
            f"servers not started ({env_file} missing): run `make test-integration`, or "
            "`scripts/services.sh start` before pytest"
        )
    return read_env_file(env_file)


def psql(services: dict[str, str], sql: str) -> str:
    env = {**os.environ, "PGPASSWORD": services["MLOPS_PG_PASSWORD"]}
    command = ["psql", "-h", services["MLOPS_PG_HOST"], "-p", services["MLOPS_PG_PORT"]]
    command += ["-U", services["MLOPS_PG_USER"], "-d", "postgres", "-tAc", sql]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def production(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """The lifecycle through `python -m mlops_assets demo --json` on the production profile,
    with the same small data as the fast suite's `lifecycle` fixture. The process environment
    is switched to the production profile for the session (restored at the end)."""
    root = tmp_path_factory.mktemp("production")
    suffix = uuid.uuid4().hex[:8]
    database = f"dagster_it_{suffix}"
    psql(services, f"create database {database}")
    env = {
        **services,
        "MLOPS_PG_DB": database,
        "MLOPS_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "dagster"),
    }
    saved = {name: os.environ.get(name) for name in [*env, "MLOPS_CONFIG"]}
    os.environ.update(env)
    (root / "dagster").mkdir()
    shutil.copy(REPO / "deploy" / "production" / "dagster.yaml", root / "dagster" / "dagster.yaml")

    model = yaml.safe_load(DEMO_SPEC_PATH.read_text())["model"]
    spec_path = write_spec(
        root / "spec.yaml",
        name=f"loans_{suffix}",
        model={**model, "training_window_days": TEST_WINDOW_DAYS, "holdout_days": 2},
    )
    spec = load_spec(spec_path)
    # Warm-up, training days, MONITOR_DAYS sensor-driven days, then spare days for bad data.
    days = TEST_WARMUP_DAYS + TEST_TRAIN_DAYS + MONITOR_DAYS + 2
    # Days arrive one at a time (`demo --replay-from`); the spare days arrive after the story.
    staged = root / "staged"
    write_demo_data(staged, start=spec.partitions.start, days=days, rows_per_day=TEST_ROWS_PER_DAY)
    os.environ["MLOPS_CONFIG"] = str(spec_path)
    command = [sys.executable, "-m", "mlops_assets", "demo", "--json", "--config", str(spec_path)]
    command += ["--train-days", str(TEST_TRAIN_DAYS), "--monitor-days", str(MONITOR_DAYS)]
    command += ["--start", spec.partitions.start.isoformat(), "--replay-from", str(staged)]
    cli = subprocess.run(
        command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=900
    )
    for spare in sorted(staged.iterdir())[-2:]:
        shutil.copyfile(spare, root / "home" / "demo_data" / spare.name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "production_demo.stderr.log").write_text(cli.stderr)
    (ARTIFACTS / "production_demo.stdout.json").write_text(cli.stdout)
    try:
        yield {
            "root": root,
            "home": root / "home",
            "env": env,
            "spec_path": spec_path,
            "spec": spec,
            "exit_code": cli.returncode,
            "stdout": cli.stdout,
            "stderr": cli.stderr,
            "summary": json.loads(cli.stdout) if cli.returncode in (0, 1) else {},
        }
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def bad_partition(production: dict) -> dict:
    """The day after the last trained one, with broken rows, run through the lifecycle job on
    the production instance: the blocking GX check must stop it."""
    from dagster import DagsterInstance

    from mlops_assets.keys import LIFECYCLE_JOB, scoped_name
    from mlops_assets.pipeline import build_definitions

    summary = production["summary"]
    runs = summary["runs"] + [run for day in summary.get("days", []) for run in day["runs"]]
    last = max(run["partition"] for run in runs)
    day = (pd.Timestamp(last) + timedelta(days=1)).date().isoformat()
    source = production["home"] / "demo_data" / f"loans_{day}.parquet"
    df = pd.read_parquet(source)
    df.loc[0:4, "income"] = None
    df.loc[5, "debt_to_income"] = 5.0
    df.to_parquet(source, index=False)
    spec = production["spec"]
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
    result = job.execute_in_process(
        partition_key=day, instance=DagsterInstance.get(), raise_on_error=False
    )
    return {"day": day, "result": result}
