"""Orchestration overhead: the demo lifecycle through Dagster vs the same asset code called
directly, without Dagster's executor, event log, run storage or IO manager.

Both sides run the same plan on the same demo data in a fresh MLOPS_HOME: `ingest` for the
warm-up days, then the seven lifecycle assets (raw_data ... batch_predictions) for the training
days. The Dagster side runs `job.execute_in_process` on a persistent sqlite instance, as
`make demo` does. The plain side invokes each asset's compute function with
`build_asset_context` and passes values in memory: the same library calls (GX, Feast, sklearn,
MLflow) in the same order. Each sample is a fresh interpreter; samples alternate. Only the
plan is timed (not interpreter start or data generation). Target: ratio <= 1.3.

The gate is configured empty (fail closed) on both sides, so no candidate is promoted and
batch_predictions finds no champion: promotion's audit record needs `context.run`, which a
directly invoked asset does not have.

    .venv/bin/python benchmarks/bench_orchestration.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
INGEST = ["raw_data", "validated_data", "features"]
LIFECYCLE = [*INGEST, "training_set", "candidate_model", "model_promotion", "batch_predictions"]


def make_plan(start, window: int, train_days: int) -> list[tuple[str, list[str]]]:
    days = [(start + timedelta(days=i)).isoformat() for i in range(window - 1 + train_days)]
    return [(d, INGEST if i < window - 1 else LIFECYCLE) for i, d in enumerate(days)]


def run_dagster(spec, plan) -> None:
    from dagster import AssetKey, DagsterInstance

    from mlops_assets.pipeline import LIFECYCLE_JOB, build_definitions

    job = build_definitions(spec).resolve_job_def(LIFECYCLE_JOB)
    instance = DagsterInstance.get()
    for day, names in plan:
        result = job.execute_in_process(
            partition_key=day, instance=instance, asset_selection=[AssetKey(n) for n in names]
        )
        assert result.success


def run_plain(spec, plan) -> None:
    from dagster import AssetCheckResult, AssetCheckSeverity, Output, build_asset_context

    from mlops_assets.pipeline import build_assets, default_resources

    assets = {a.key.to_user_string(): a for a in build_assets(spec)}
    resources = {k: v for k, v in default_resources().items() if k != "io_manager"}
    for day, names in plan:
        values: dict[str, object] = {}
        for name in names:
            asset = assets[name]
            data_inputs = {
                d.name for d in asset.node_def.input_defs if not d.dagster_type.is_nothing
            }
            inputs = {
                arg: values[key.to_user_string()]
                for arg, key in asset.keys_by_input_name.items()
                if arg in data_inputs and key.to_user_string() in values
            }
            context = build_asset_context(partition_key=day, resources=resources)
            produced = asset(context, **inputs)
            events = [produced] if isinstance(produced, Output) else list(produced or [])
            for event in events:
                if isinstance(event, Output):
                    values[name] = event.value
                blocked = isinstance(event, AssetCheckResult) and not event.passed
                assert not (blocked and event.severity == AssetCheckSeverity.ERROR), event


def child(mode: str, rows: int, window: int, train_days: int) -> None:
    """One sample in this fresh interpreter: prints the seconds the plan took."""
    home = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    os.environ.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    from mlops_assets.demo_data import DEMO_START, write_demo_data
    from mlops_assets.spec import DEMO_SPEC_PATH, load_spec

    write_demo_data(days=window - 1 + train_days, rows_per_day=rows)
    raw = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    raw["model"].update(training_window_days=window, holdout_days=1)
    # Fail closed: the gate never blesses. Blessing records a governance audit that reads
    # `context.run`, which a directly invoked asset does not have.
    raw["gate"] = {}
    (home / "spec.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(home / "spec.yaml")
    plan = make_plan(DEMO_START, window, train_days)
    start = time.perf_counter()
    (run_dagster if mode == "dagster" else run_plain)(spec, plan)
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - start}))


def sample(mode: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows)]
    cmd += ["--window", str(args.window), "--train-days", str(args.train_days)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000, help="rows per day")
    parser.add_argument("--window", type=int, default=4, help="training_window_days")
    parser.add_argument("--train-days", type=int, default=2)
    parser.add_argument("--child", choices=["dagster", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.window, args.train_days)
        return
    times: dict[str, list[float]] = {"dagster": [], "plain": []}
    for i in range(args.repeats):
        order = ["plain", "dagster"] if i % 2 else ["dagster", "plain"]
        for mode in order:
            times[mode].append(sample(mode, args))
            print(f"  sample {i + 1} {mode:8s} {times[mode][-1]:7.2f} s", flush=True)
    d, p = statistics.median(times["dagster"]), statistics.median(times["plain"])
    pairs = statistics.median(x / y for x, y in zip(times["dagster"], times["plain"], strict=True))
    ingest, lifecycle = args.window - 1, args.train_days
    print(f"plan: {ingest} ingest days + {lifecycle} lifecycle days, {args.rows} rows a day")
    print(f"through Dagster: median {d:.2f} s; plain calls: median {p:.2f} s")
    print(f"ratio of medians {d / p:.2f}, median of paired ratios {pairs:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
