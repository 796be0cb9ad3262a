"""Sensor tick: drift_sensor and new_data_sensor evaluated through Dagster's sensor API on an
instance holding 1,000 past runs launched by the sensor (and as many drift_report
materializations), versus the same ticks on an empty instance. Target: under 1 s a tick.

    .venv/bin/python benchmarks/bench_sensor_tick.py --runs 1000 --repeats 5
"""

import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import yaml
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DagsterRun,
    build_sensor_context,
    instance_for_test,
)

from mlops_assets.automation import DRIFT_SENSOR, NEW_DATA_SENSOR, RETRAIN_JOB
from mlops_assets.demo_data import write_demo_data
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import DEMO_SPEC_PATH, load_spec


def fill(instance: DagsterInstance, runs: int, start: date) -> None:
    """`runs` retraining runs launched by the drift sensor, and one drift_report a day."""
    for i in range(runs):
        day = (start + timedelta(days=i % 365)).isoformat()
        instance.add_run(
            DagsterRun(
                job_name=RETRAIN_JOB,
                tags={
                    "dagster/sensor_name": DRIFT_SENSOR,
                    "dagster/run_key": f"{RETRAIN_JOB}:{day}:champion-v{i}",
                    "dagster/partition": day,
                },
            )
        )
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key="drift_report",
                partition=day,
                metadata={"drift_share": 0.1, "drift_detected": False, "model_version": "1"},
            )
        )


def tick_seconds(defs, instance: DagsterInstance, name: str, repeats: int) -> float:
    sensor = defs.resolve_sensor_def(name)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        with build_sensor_context(instance=instance, definitions=defs) as context:
            sensor.evaluate_tick(context)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        raw = yaml.safe_load(DEMO_SPEC_PATH.read_text())
        raw["source"]["path"] = str(Path(folder) / "loans_{date}.parquet")
        spec_path = Path(folder) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(raw))
        spec = load_spec(spec_path)
        write_demo_data(Path(folder), start=spec.partitions.start, days=75, rows_per_day=10)
        defs = build_definitions(spec)
        results = {}
        with instance_for_test() as empty, instance_for_test() as full:
            fill(full, args.runs, spec.partitions.start)
            for name in (DRIFT_SENSOR, NEW_DATA_SENSOR):
                results[name] = (
                    tick_seconds(defs, empty, name, args.repeats),
                    tick_seconds(defs, full, name, args.repeats),
                )
    for name, (base, loaded) in results.items():
        print(
            f"{name}: empty instance {base * 1000:.0f} ms, with {args.runs} runs "
            f"{loaded * 1000:.0f} ms, ratio {loaded / base:.2f}; "
            f"{'under' if loaded < 1 else 'OVER'} the 1 s target"
        )


if __name__ == "__main__":
    main()
