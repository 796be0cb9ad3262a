"""Shared fixtures: every test state lives in a temporary MLOPS_HOME (Dagster, MLflow, Feast)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from mlops_assets.demo_data import DRIFT_START, demo_data_dir, write_demo_data
from mlops_assets.spec import DEMO_SPEC_PATH
from mlops_resources.storage import disable_telemetry

disable_telemetry()

REPO = Path(__file__).resolve().parents[1]

TEST_ROWS_PER_DAY = 400
TEST_WINDOW_DAYS = 6
TEST_WARMUP_DAYS = TEST_WINDOW_DAYS  # ingest days before training: a window of labels (delay 1)
TEST_TRAIN_DAYS = 2
TEST_STATIONARY_DAYS = 3  # monitored days before the demo's drift day
TEST_MONITOR_DAYS = TEST_STATIONARY_DAYS + 2  # ... then the drift day and one after it
TEST_START = DRIFT_START - timedelta(days=TEST_WARMUP_DAYS + TEST_TRAIN_DAYS + TEST_STATIONARY_DAYS)
TEST_EXTRA_DAYS = 2  # data written after the story, for tests that need an unused partition


def python_command(code: str, *args: str) -> list[str]:
    """`python <file> <args>` running `code` from a temporary file, with the working directory
    first on sys.path as `python -c` has it. Not `python -c`: with pyspark installed, a process
    whose __main__ has no __file__ exits 0 as soon as it imports Great Expectations (pyspark's
    connect check takes it for a doctest run)."""
    fd, path = tempfile.mkstemp(prefix="suite_child_", suffix=".py")
    with os.fdopen(fd, "w") as file:
        file.write("import os, sys\nsys.path.insert(0, os.getcwd())\n" + code)
    return [sys.executable, path, *args]


def run_cli(*args: str) -> tuple[int, str]:
    """`python -m mlops_assets <args>` in process: its exit code and what it printed on stdout."""
    from mlops_assets.cli import main

    out = io.StringIO()
    saved = os.environ.get("MLOPS_CONFIG")  # `--config` sets it for the CLI's process
    try:
        with contextlib.redirect_stdout(out):
            code = main(list(args))
    finally:
        if saved is None:
            os.environ.pop("MLOPS_CONFIG", None)
        else:
            os.environ["MLOPS_CONFIG"] = saved
    return code, out.getvalue()


def race_scripts(script: str, argvs: list[list[str]], timeout: float) -> list:
    """Run `script` (python_command) once per argv, all at once, from the repository root; each must
    exit 0 and print JSON on its last line, which is returned (one value per argv, in order)."""
    racers = [
        subprocess.Popen(
            python_command(script, *argv),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    outputs = [racer.communicate(timeout=timeout) for racer in racers]
    for racer, (_, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


def write_spec(path: Path, **overrides: object) -> Path:
    """The demo spec with `overrides` merged in (nested dicts replace whole sections)."""
    spec = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLOPS_HOME and DAGSTER_HOME for one test."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The demo story run once through the CLI on small demo data: warm-up ingest days,
    TEST_TRAIN_DAYS days of training, gating and scoring, then TEST_MONITOR_DAYS days driven by
    the sensors, through the demo's drift day. Tests read the state it leaves."""
    from mlops_assets.spec import load_spec

    root = tmp_path_factory.mktemp("lifecycle")
    saved = {k: os.environ.get(k) for k in ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_CONFIG")}
    os.environ["MLOPS_HOME"] = str(root / "home")
    os.environ["DAGSTER_HOME"] = str(root / "home" / "dagster")
    days = TEST_WARMUP_DAYS + TEST_TRAIN_DAYS + TEST_MONITOR_DAYS + TEST_EXTRA_DAYS
    # Days arrive one at a time from a staging folder (`demo --replay-from`), so a day's labels
    # are delivered only after it; the extra days arrive after the story.
    staged = root / "staged"
    write_demo_data(staged, start=TEST_START, days=days, rows_per_day=TEST_ROWS_PER_DAY)
    demo = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    monitoring = demo["monitoring"]
    # 400 rows a day: metric noise is larger than with the demo's 2,000, so wider tolerances.
    monitoring["performance"].update(
        max_degradation={"roc_auc": 0.1}, rollback_margin={"roc_auc": 0.08}
    )
    spec_path = write_spec(
        root / "spec.yaml",
        model={**demo["model"], "training_window_days": TEST_WINDOW_DAYS, "holdout_days": 2},
        monitoring=monitoring,
    )
    code, stdout = run_cli(
        "demo",
        "--json",
        "--config",
        str(spec_path),
        "--train-days",
        str(TEST_TRAIN_DAYS),
        "--start",
        TEST_START.isoformat(),
        "--monitor-days",
        str(TEST_MONITOR_DAYS),
        "--replay-from",
        str(staged),
    )
    extra_days = [
        TEST_START + timedelta(days=days - TEST_EXTRA_DAYS + i) for i in range(TEST_EXTRA_DAYS)
    ]
    for day in extra_days:
        name = f"loans_{day.isoformat()}.parquet"
        shutil.copyfile(staged / name, demo_data_dir() / name)
    summary_path = root / "summary.json"
    summary_path.write_text(stdout)
    try:
        yield {
            "root": root,
            "home": root / "home",
            "spec_path": spec_path,
            "spec": load_spec(spec_path),
            "exit_code": code,
            "stdout": stdout,
            "summary": json.loads(stdout),
            "first_day": TEST_START,
            "extra_days": extra_days,
        }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
