"""The spark engine against the pandas engine on the same data (issue 16, "Measured").

For each engine, in its own MLOPS_HOME and its own process (so peak memory is that engine's):
ingest the warm-up days (raw_data, validated_data, features), then time the `lifecycle`
selection on the next day (ingest, training_set, candidate_model, model_promotion,
batch_predictions, drift_report) and the `daily` selection on the day after (ingest,
batch_predictions, drift_report), each through Dagster's materialize() in process. Reported:
wall seconds, rows/s (the day's rows over the job's seconds) and the peak resident memory of
the engine's process tree, sampled every 0.2 s with psutil, in total and for each part: the
step's Python process (the driver's Python side: what it collects, e.g. the training window),
Spark's JVM (the driver; in local mode the executors live in it too, so it is an upper bound on
the driver alone) and the Python workers the JVM starts (mapInPandas scoring and writes).

    .venv/bin/python benchmarks/bench_spark.py --rows 1000000          # ~13 min on 2 cores
    .venv/bin/python benchmarks/bench_spark.py --rows 5000000          # ~25 min
    .venv/bin/python benchmarks/bench_spark.py --rows 50000 --out /tmp/spark_quick.json

Writes benchmarks/results/spark.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from scale_data import write_days  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "spark.json"
START = date(2024, 2, 10)  # inside the demo spec's partitions
ROLES = ("driver_python", "jvm", "python_workers")
WARMUP_DAYS = 2  # ingested before the timed jobs (the training window)
ID_RULE = {
    "type": "expect_column_values_to_match_regex",
    "kwargs": {"column": "customer_id", "regex": "^C[0-9]{8}$"},
}


def days() -> list[date]:
    """Warm-up days, the lifecycle day and the daily day."""
    return [START + timedelta(days=i) for i in range(WARMUP_DAYS + 2)]


def write_data(folder: Path, rows: int) -> None:
    """The loan-like stream of bench_scale (benchmarks/scale_data.py: the demo's features and
    label relationship, 8-digit ids) at `rows` rows a day, one Parquet file a day."""
    missing = [day for day in days() if not (folder / f"loans_{day}.parquet").exists()]
    write_days(folder, missing, rows)


def write_spec(root: Path, data: Path, engine: str) -> Path:
    import yaml

    from mlops_assets.spec import DEMO_SPEC_PATH

    spec = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    spec["expectations"] = [  # the demo's rules, with the generated data's 8-digit ids
        ID_RULE if rule["type"] == ID_RULE["type"] else rule for rule in spec["expectations"]
    ]
    spec.update(
        engine=engine,
        online_features=False,
        source={"path": str(data / "loans_{date}.parquet")},
        model={**spec["model"], "training_window_days": WARMUP_DAYS, "holdout_days": 1},
        gate={"value_thresholds": {"roc_auc": {"min": 0.5}}},
    )
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def worker(spec_path: str) -> None:
    """In the engine's process: warm-up ingest, then the timed lifecycle and daily runs; one
    JSON line of timings on stdout."""
    from dagster import materialize

    from mlops_assets.keys import asset_key
    from mlops_assets.pipeline import build_assets, default_resources
    from mlops_assets.spec import load_spec
    from mlops_resources.spark import SPARK_IO_MANAGER, SparkResource, SparkTableIOManager

    spec = load_spec(spec_path)
    assets = build_assets(spec)
    spark = SparkResource(stop_after_step=False)  # one session for the whole process
    resources = {
        **default_resources(),
        "spark": spark,
        SPARK_IO_MANAGER: SparkTableIOManager(spark=spark),
    }
    ingest = ["raw_data", "validated_data", "features"]
    selections = {
        "lifecycle": [*ingest, "training_set", "candidate_model", "model_promotion"]
        + ["batch_predictions", "drift_report"],
        "daily": [*ingest, "batch_predictions", "drift_report"],
    }

    def run(names: list[str], day: date) -> float:
        started = time.perf_counter()
        result = materialize(
            assets,
            selection=[asset_key(spec, n) for n in names],
            partition_key=day.isoformat(),
            resources=resources,
        )
        assert result.success
        return time.perf_counter() - started

    timings: dict[str, float] = {}
    *warmup, lifecycle_day, daily_day = days()
    for day in warmup:
        timings[f"ingest {day}"] = run(ingest, day)
    timings["lifecycle"] = run(selections["lifecycle"], lifecycle_day)
    timings["daily"] = run(selections["daily"], daily_day)
    spark.stop()
    print(json.dumps(timings))


def role(process: Any, worker_process: Any) -> str:
    """Which part of the engine's process tree `process` is: the step's Python process (the
    driver's Python side), Spark's JVM (driver; in local mode the executors too) or a Python
    worker the JVM started (mapInPandas, pandas UDFs)."""
    if process.pid == worker_process.pid:
        return "driver_python"
    return "jvm" if process.name() == "java" else "python_workers"


def run_engine(engine: str, root: Path, data: Path) -> dict[str, Any]:
    """The worker for `engine` in a child process; its timings, the peak RSS of its process
    tree and the peak of each part of the tree (each part's own maximum)."""
    import psutil

    home = root / engine
    home.mkdir(parents=True, exist_ok=True)
    spec = write_spec(home, data, engine)
    env = {
        **os.environ,
        "MLOPS_HOME": str(home / "home"),
        "DAGSTER_HOME": str(home / "home" / "dagster"),
        "MLOPS_DATA_ROOTS": str(data),
        "PYTHONPATH": str(REPO),
    }
    log = home / "worker.log"  # the worker's stderr: Dagster's and Spark's logs
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        child = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(spec)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    peak = 0
    peaks = dict.fromkeys(ROLES, 0)
    parent = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            by_role = dict.fromkeys(ROLES, 0)
            for process in tree:
                by_role[role(process, parent)] += process.memory_info().rss
        except psutil.Error:
            continue
        peak = max(peak, sum(by_role.values()))
        peaks = {name: max(peaks[name], by_role[name]) for name in ROLES}
        time.sleep(0.2)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{engine} worker failed ({child.returncode}), {log}:\n{tail}")
    return {
        "timings": json.loads(out.strip().splitlines()[-1]),
        "peak_rss_mb": peak / 2**20,
        "peak_rss_mb_by_process": {name: value / 2**20 for name, value in peaks.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows a day")
    parser.add_argument("--engines", default="pandas,spark")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    root = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    data = root / "data"
    write_data(data, args.rows)
    results: dict[str, Any] = {
        "rows_per_day": args.rows,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),  # other work on the machine skews timings
        "engines": {},
    }
    for engine in args.engines.split(","):
        measured = run_engine(engine, root, data)
        timings = measured["timings"]
        results["engines"][engine] = {
            **measured,
            "rows_per_second": {
                job: round(args.rows / timings[job]) for job in ("lifecycle", "daily")
            },
        }
        daily_rate = args.rows / timings["daily"]
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in measured["peak_rss_mb_by_process"].items())
        print(
            f"{engine:7s} lifecycle {timings['lifecycle']:7.1f} s  daily {timings['daily']:7.1f} s"
            f"  ({daily_rate:,.0f} rows/s)  peak {measured['peak_rss_mb']:,.0f} MB"
            f"  ({parts})",
            flush=True,
        )
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
