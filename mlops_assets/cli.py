"""Command line: run the lifecycle headless through Dagster and print what happened.

python -m mlops_assets demo [--config FILE] [--json] [--train-days N]
python -m mlops_assets demo-data
"""

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import date, timedelta
from typing import Any

from dagster import DagsterInstance, Definitions

from mlops_assets.pipeline import INGEST_JOB, LIFECYCLE_JOB, build_definitions
from mlops_assets.spec import PipelineSpec, SpecError, load_spec
from mlops_resources.storage import dagster_home, mlops_home

DAGSTER_YAML = """\
# Written by mlops_assets on first use: SQLite storage in this folder, no telemetry.
telemetry:
  enabled: false
nux:
  enabled: false
"""


def prepare_dagster_home() -> DagsterInstance:
    """The persistent instance in $DAGSTER_HOME (default MLOPS_HOME/dagster), so `dagster dev`
    shows the runs the CLI made."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def summarize_run(result: Any, day: str, job: str, seconds: float) -> dict[str, Any]:
    """What a person wants from one run: rows, checks, model, gate verdict, predictions."""
    summary: dict[str, Any] = {
        "partition": day,
        "job": job,
        "run_id": result.run_id,
        "success": result.success,
        "seconds": round(seconds, 1),
        "checks": [],
    }
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key.to_user_string()
        meta = {k: v.value for k, v in materialization.metadata.items()}
        if key in ("raw_data", "validated_data", "training_set", "batch_predictions"):
            summary[f"{key}_rows"] = meta.get("dagster/row_count")
        if key == "candidate_model":
            summary["model_version"] = meta.get("model_version")
            summary["model_metrics"] = {
                k.removeprefix("holdout_"): round(v, 4)
                for k, v in meta.items()
                if k.startswith("holdout_")
            }
            summary["mlflow_run"] = meta.get("mlflow_run")
        if key == "model_promotion":
            summary["gate"] = {
                "blessed": meta.get("blessed"),
                "champion_moved": meta.get("champion_moved"),
                "champion_before": meta.get("champion_before"),
                "champion_after": meta.get("champion_after"),
                "why": meta.get("message"),
            }
    for evaluation in result.get_asset_check_evaluations():
        summary["checks"].append(
            {
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "passed": evaluation.passed,
                "description": evaluation.description,
            }
        )
    if not result.success:
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        summary["failed_steps"] = [
            {
                "step": e.step_key,
                "error": e.event_specific_data.error.message.strip()
                if e.event_specific_data.error
                else "",
            }
            for e in failures
        ]
    return summary


def demo_schedule(spec: PipelineSpec, train_days: int) -> list[tuple[str, str]]:
    """(partition, job) pairs: ingest until a training window is full, then the whole lifecycle
    for `train_days` days."""
    warmup = spec.model.training_window_days - 1
    start = spec.partitions.start
    last = spec.partitions.end or date.today()
    plan = []
    for offset in range(warmup + train_days):
        day = start + timedelta(days=offset)
        if spec.partitions.end and day >= last:
            break
        plan.append((day.isoformat(), INGEST_JOB if offset < warmup else LIFECYCLE_JOB))
    return plan


def run_demo(spec: PipelineSpec, defs: Definitions, train_days: int) -> dict[str, Any]:
    instance = prepare_dagster_home()
    runs = []
    for day, job_name in demo_schedule(spec, train_days):
        job = defs.resolve_job_def(job_name)
        started = time.monotonic()
        print(f"[{day}] running {job_name} ...", file=sys.stderr, flush=True)
        result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
        runs.append(summarize_run(result, day, job_name, time.monotonic() - started))
    champion = next((r["gate"]["champion_after"] for r in reversed(runs) if r.get("gate")), None)
    return {
        "pipeline": spec.name,
        "model": spec.model_name,
        "mlops_home": str(mlops_home()),
        "dagster_home": str(dagster_home()),
        "runs": runs,
        "runs_failed": sum(not r["success"] for r in runs),
        "champion_version": champion,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"pipeline {summary['pipeline']} (state in {summary['mlops_home']})"]
    for run in summary["runs"]:
        status = "ok" if run["success"] else "FAILED"
        parts = [f"{run['partition']} {run['job']:<9} {status:<6} {run['seconds']:>5}s"]
        parts.append(f"raw {run.get('raw_data_rows')} validated {run.get('validated_data_rows')}")
        failed_checks = [c["check"] for c in run["checks"] if not c["passed"]]
        parts.append(
            f"checks {len(run['checks']) - len(failed_checks)}/{len(run['checks'])} passed"
        )
        if "model_version" in run:
            metrics = ", ".join(f"{k} {v}" for k, v in run["model_metrics"].items())
            parts.append(f"model v{run['model_version']} ({metrics})")
        if "gate" in run:
            gate = run["gate"]
            moved = "champion moved" if gate["champion_moved"] else "champion kept"
            parts.append(f"{moved} -> v{gate['champion_after']}: {gate['why']}")
        if "batch_predictions_rows" in run:
            parts.append(f"predictions {run['batch_predictions_rows']}")
        for failure in run.get("failed_steps", []):
            parts.append(f"failed {failure['step']}: {failure['error']}")
        lines.append(" | ".join(parts))
    lines.append(f"champion: v{summary['champion_version']}; failed runs: {summary['runs_failed']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the lifecycle headless through Dagster")
    demo.add_argument("--config", help="pipeline spec YAML (default: $MLOPS_CONFIG or the demo)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    demo.add_argument(
        "--train-days", type=int, default=3, help="days of training + promotion (default 3)"
    )
    commands.add_parser("demo-data", help="write the bundled demo dataset into MLOPS_HOME")
    args = parser.parse_args(argv)

    from mlops_assets.demo_data import write_demo_data

    if args.command == "demo-data":
        files = write_demo_data()
        print(f"{len(files)} demo files in {files[0].parent}")
        return 0
    if args.config:
        os.environ["MLOPS_CONFIG"] = str(args.config)
    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if spec.is_bundled_demo:
        write_demo_data()
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_demo(spec, build_definitions(spec), args.train_days)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 1 if summary["runs_failed"] else 0
