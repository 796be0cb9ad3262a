"""Command line: run the lifecycle headless through Dagster and print what happened.

python -m mlops_assets demo [--config FILE | --model NAME] [--json] [--train-days N]
python -m mlops_assets demo-data
python -m mlops_assets retire --version N --reason TEXT [--force] [--config FILE | --model NAME]
python -m mlops_assets reproduce --version N [--json] [--config FILE | --model NAME]
python -m mlops_assets serve [--host H] [--port P] [--config FILE | --model NAME]  (docs/serving.md)

Which pipeline: --config FILE (or $MLOPS_CONFIG), else the one named by --model among those the
Dagster project in the current folder declares (defs/<model>/defs.yaml), else that project's
only pipeline (or its demo pipeline, as in this repo), else the bundled demo.
"""

import argparse
import contextlib
import getpass
import json
import os
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import DagsterEventType, DagsterInstance, Definitions

from mlops_assets.keys import (
    INGEST_JOB,
    LIFECYCLE_JOB,
    ROLLBACK_JOB,
    ROLLBACK_OP,
    Meta,
    pipeline_of,
    scoped_name,
)
from mlops_assets.pipeline import build_definitions
from mlops_assets.project import CONFIG_ENV, project_specs
from mlops_assets.registry_commands import relocate_command, reproduce_command, retire_command
from mlops_assets.spec import PipelineSpec, SpecError, check_model_params, load_spec
from mlops_assets.story import champion_now, run_story, story_days
from mlops_resources.instance import write_instance_yaml
from mlops_resources.storage import dagster_home, mlops_home

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo


def prepare_dagster_home() -> DagsterInstance:
    """The persistent instance in $DAGSTER_HOME (default MLOPS_HOME/dagster), so `dagster dev`
    shows the runs the CLI made; its dagster.yaml from mlops_resources/instance.py."""
    home = dagster_home()
    write_instance_yaml(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def summarize_run(result: Any, day: str, job: str, seconds: float) -> dict[str, Any]:
    """What a person wants from one run: rows, checks, model, gate verdict, predictions. Assets
    are named without their pipeline prefix (a run is of one pipeline's job)."""
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
        key = materialization.asset_key.path[-1]
        meta = {k: v.value for k, v in materialization.metadata.items()}
        if key in ("raw_data", "validated_data", "training_set", "batch_predictions"):
            summary[f"{key}_rows"] = meta.get(Meta.ROW_COUNT)
        if key == "candidate_model":
            summary["model_version"] = meta.get(Meta.MODEL_VERSION)
            summary["model_metrics"] = {
                k.removeprefix(Meta.HOLDOUT_PREFIX): round(v, 4)
                for k, v in meta.items()
                if k.startswith(Meta.HOLDOUT_PREFIX)
            }
            summary["mlflow_run"] = meta.get(Meta.MLFLOW_RUN)
        if key == "model_promotion":
            summary["gate"] = {
                "version": meta.get(Meta.CANDIDATE_VERSION),
                "blessed": meta.get(Meta.BLESSED),
                "champion_moved": meta.get(Meta.CHAMPION_MOVED),
                "champion_before": meta.get(Meta.CHAMPION_BEFORE),
                "champion_after": meta.get(Meta.CHAMPION_AFTER),
                "why": meta.get(Meta.MESSAGE),
            }
        if key == "drift_report":
            summary["drift"] = {
                k: meta.get(k)
                for k in (
                    Meta.DRIFT_SHARE,
                    Meta.DRIFT_DETECTED,
                    Meta.DRIFTED_COLUMNS,
                    Meta.PREDICTION_DRIFT,
                    Meta.MODEL_VERSION,
                    Meta.DRIFT_REPORT_HTML,
                )
            }
        if key == "model_performance":
            summary["performance"] = {
                "partition": day,
                "model_version": meta.get(Meta.MODEL_VERSION),
                "degraded": meta.get(Meta.DEGRADED),
                "degraded_metrics": meta.get(Meta.DEGRADED_METRICS),
                "rollback_recommended": meta.get(Meta.ROLLBACK_RECOMMENDED),
                **{k: round(v, 4) for k, v in meta.items() if k.startswith(Meta.LIVE_PREFIX)},
            }
    if job == ROLLBACK_JOB and result.success:
        op = scoped_name(pipeline_of(result.job_def.name), ROLLBACK_OP)
        summary["rollback"] = result.output_for_node(op)
    for evaluation in result.get_asset_check_evaluations():
        summary["checks"].append(
            {
                "asset": evaluation.asset_key.path[-1],
                "check": evaluation.check_name,
                "passed": evaluation.passed,
                "description": evaluation.description,
            }
        )
    if not result.success:
        summary["failed_steps"] = failed_steps(result.all_events)
    return summary


def failed_steps(events: list[Any]) -> list[dict[str, Any]]:
    """Each failed step with its root cause; a step whose resources failed to start has no
    STEP_FAILURE (in process), so its RESOURCE_INIT_FAILURE stands for it, and a run that failed
    without either is reported as step `(run)`."""
    failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    failed = {e.step_key for e in failures}
    failures += [
        e
        for e in events
        if e.event_type == DagsterEventType.RESOURCE_INIT_FAILURE and e.step_key not in failed
    ]
    if not failures:
        failures = [e for e in events if e.event_type == DagsterEventType.RUN_FAILURE][:1]
    return [step_failure(e) for e in failures]


# Dagster wraps the step's own error as the cause of its exceptions: classes named Dagster*
# ("Error occurred while executing op ...", "Error executing resource_fn ...") and, once the
# retries are spent, these ("Exceeded max_retries of 2").
RETRY_WRAPPERS = ("RetryRequestedFromPolicy", "RetryRequested")


def error_text(error: "SerializableErrorInfo") -> str:
    """`Class: message` without the module path; a Failure's own description as written."""
    message = error.message.strip()
    if error.cls_name == "Failure":
        return message.partition(": ")[2] or message
    head, colon, rest = message.partition(": ")
    return f"{head.rpartition('.')[2]}{colon}{rest}" if colon and " " not in head else message


def step_failure(event: Any) -> dict[str, Any]:
    """A failed step and its root cause: Dagster's wrappers are passed over to the error the
    step's code (or a library) raised; the innermost of those, or the first `Failure` (its
    description is the message written for people). `causes` lists them all, outermost first,
    when there are several."""
    error = getattr(event.event_specific_data, "error", None)
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    own = [
        e
        for e in chain
        if not ((e.cls_name or "").startswith("Dagster") or e.cls_name in RETRY_WRAPPERS)
    ] or chain[-1:]
    root = next((e for e in own if e.cls_name == "Failure"), own[-1] if own else None)
    failure = {"step": event.step_key or "(run)", "error": error_text(root) if root else ""}
    if len(own) > 1:
        failure["causes"] = [error_text(e) for e in own]
    return failure


STATIONARY_DAYS = 5


def warmup_days(spec: PipelineSpec) -> int:
    """Days ingested before the first training: a full window of delivered labels."""
    return spec.model.training_window_days + spec.monitoring.performance.label_delay_days - 1


def demo_schedule(spec: PipelineSpec, train_days: int, start: date) -> list[tuple[str, str]]:
    """(partition, job) pairs: ingest until a window of delivered labels is full, then the
    whole lifecycle for `train_days` days."""
    warmup = warmup_days(spec)
    days = story_days(start, warmup + train_days, spec.partitions.end)
    return [
        (day.isoformat(), INGEST_JOB if offset < warmup else LIFECYCLE_JOB)
        for offset, day in enumerate(days)
    ]


def default_story(spec: PipelineSpec, train_days: int) -> tuple[date, int]:
    """First day and number of monitored days: for the bundled demo, five stationary days, the
    drift day and two after it; otherwise five days from the start of the partitions."""
    if not spec.is_bundled_demo:
        return spec.partitions.start, STATIONARY_DAYS
    from mlops_assets.demo_data import DRIFT_START

    warmup = warmup_days(spec)
    start = DRIFT_START - timedelta(days=warmup + train_days + STATIONARY_DAYS)
    return start, STATIONARY_DAYS + 3


def arrival(spec: PipelineSpec, replay_from: Path | None) -> Any:
    """How a day's source file appears: written (the bundled demo), copied from `replay_from`
    (a folder of files named like the source's file name), or already there."""
    from mlops_assets.demo_data import write_demo_data

    def arrive(day: date) -> None:
        if spec.is_bundled_demo:
            write_demo_data(start=day, days=1)
        elif replay_from is not None:
            target = Path(spec.source_pattern().replace("{date}", day.isoformat()))
            staged = replay_from / target.name
            if not staged.is_file():
                raise SystemExit(f"--replay-from: {staged} not found for {day}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged, target.with_name(f".{target.name}.tmp"))
            target.with_name(f".{target.name}.tmp").replace(target)

    return arrive


def run_demo(
    spec: PipelineSpec,
    defs: Definitions,
    train_days: int,
    start: date,
    monitor_days: int,
    replay_from: Path | None = None,
) -> dict[str, Any]:
    """Warm up (ingest, then train) with jobs launched directly, then let the sensors drive
    `monitor_days` simulated days. Days arrive one at a time: a day's labels are delivered only
    after it (label_delay_days), so nothing trains on labels it would not have."""
    instance = prepare_dagster_home()
    plan = demo_schedule(spec, train_days, start)
    arrive = arrival(spec, replay_from)
    runs = []
    for day, job_name in plan:
        arrive(date.fromisoformat(day))
        job = defs.resolve_job_def(scoped_name(spec, job_name))
        started = time.monotonic()
        print(f"[{day}] running {job_name} ...", file=sys.stderr, flush=True)
        result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
        runs.append(summarize_run(result, day, job_name, time.monotonic() - started))

    def arrive_and_tell(day: date) -> None:
        print(f"[{day}] new data; ticking the sensors ...", file=sys.stderr, flush=True)
        arrive(day)

    first = start + timedelta(days=len(plan))
    days = story_days(first, monitor_days, spec.partitions.end)
    story = run_story(spec, defs, instance, days, arrive_and_tell, summarize_run)
    story_runs = [run for day in story for run in day["runs"]]
    return {
        "pipeline": spec.name,
        "model": spec.model_name,
        "mlops_home": str(mlops_home()),
        "dagster_home": str(dagster_home()),
        "runs": runs,
        "days": story,
        "runs_failed": sum(not r["success"] for r in [*runs, *story_runs]),
        "champion_version": champion_now(defs, spec),
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
    for day in summary.get("days", []):
        lines.append(format_day(day))
    lines.append(f"champion: v{summary['champion_version']}; failed runs: {summary['runs_failed']}")
    return "\n".join(lines)


def format_day(day: dict[str, Any]) -> str:
    """One simulated day: runs, drift, performance, sensor decisions, gate, champion."""
    parts = [f"{day['day']} {day['started_at'][11:19]}"]
    jobs = ", ".join(
        f"{r['job']} {r['partition'] or ''} {'ok' if r['success'] else 'FAILED'}".replace("  ", " ")
        for r in day["runs"]
    )
    parts.append(f"runs: {jobs or 'none'}")
    if "drift" in day:
        drift = day["drift"]
        flagged = "DRIFT" if drift["drift_detected"] else "no drift"
        parts.append(
            f"{flagged} share {drift['drift_share']:.2f} {sorted(drift['drifted_columns'] or [])}"
        )
    if "performance" in day:
        perf = day["performance"]
        state = "DEGRADED" if perf["degraded"] else "ok"
        parts.append(f"performance {perf['partition']} v{perf['model_version']} {state}")
    sensor = day["drift_sensor"]
    if sensor["run_requests"]:
        parts.append("drift_sensor -> " + ", ".join(r["run_key"] for r in sensor["run_requests"]))
    else:
        parts.append(f"drift_sensor skipped: {sensor['skip']}")
    for gate in day["gate_verdicts"]:
        parts.append(f"gate v{gate['version']}: {gate['why']}")
    if "rollback" in day:
        rollback = day["rollback"]
        parts.append(
            rollback[Meta.MESSAGE]
            if rollback.get(Meta.SKIPPED) == "true"
            else f"rolled back v{rollback[Meta.FROM_VERSION]} -> v{rollback[Meta.TO_VERSION]}"
        )
    parts.append(f"champion v{day['champion_version']}")
    return " | ".join(parts)


def rollback_command(spec: PipelineSpec, reason: str, to_version: str) -> int:
    """Run the rollback job for the user; prints what moved, or why nothing did."""
    instance = prepare_dagster_home()
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, ROLLBACK_JOB))
    config = {"reason": reason, "to_version": to_version}
    with contextlib.redirect_stdout(sys.stderr):
        result = job.execute_in_process(
            run_config={"ops": {scoped_name(spec, ROLLBACK_OP): {"config": config}}},
            instance=instance,
            tags={"user": getpass.getuser()},
            raise_on_error=False,
        )
    summary = summarize_run(result, "", ROLLBACK_JOB, 0.0)
    if not result.success:
        print(f"rollback failed: {summary['failed_steps'][0]['error']}", file=sys.stderr)
        return 1
    record = summary["rollback"]
    print(
        f"{spec.model_name}: champion v{record['from_version']} -> v{record['to_version']} "
        f"({record['reason']}); dagster run {result.run_id}"
    )
    return 0


def choose_spec(config: str | None, model: str | None, project: Path) -> PipelineSpec:
    """The pipeline a command acts on (see the module docstring); SpecError when --model names
    no pipeline of the project, or when the project has several and none is named."""
    config = config or os.environ.get(CONFIG_ENV)
    if config:
        spec = load_spec(config)
        if model and model != spec.name:
            raise SpecError(f"--model {model}: the spec {config} is pipeline {spec.name!r}")
        return spec
    specs = project_specs(project)
    if model:
        if model not in specs:
            known = ", ".join(sorted(specs)) or "none: no Dagster project (pyproject [tool.dg])"
            raise SpecError(f"--model {model}: no pipeline of that name in {project} ({known})")
        return specs[model]
    if len(specs) > 1:
        demo = [spec for spec in specs.values() if spec.is_bundled_demo]
        if not demo:
            raise SpecError(
                f"{project} defines {len(specs)} pipelines ({', '.join(sorted(specs))}): pick "
                "one with --model NAME"
            )
        others = ", ".join(sorted(set(specs) - {demo[0].name}))
        print(f"pipeline {demo[0].name} (the demo; others: {others}, see --model)", file=sys.stderr)
        return demo[0]
    return next(iter(specs.values())) if specs else load_spec()


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline spec YAML (default: $MLOPS_CONFIG)")
    parser.add_argument(
        "--model",
        help="the pipeline of that name in the Dagster project of the current folder (needed "
        "when it defines several; default: its only one or its demo, else the bundled demo)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the lifecycle headless through Dagster")
    add_spec_arguments(demo)
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    demo.add_argument(
        "--train-days", type=int, default=2, help="days of training + promotion (default 2)"
    )
    demo.add_argument(
        "--monitor-days",
        type=int,
        help="days driven by the sensors after training (default: through the demo's drift "
        "day and two after it; 5 for other specs)",
    )
    demo.add_argument(
        "--start",
        type=date.fromisoformat,
        help="first day (default: so the demo's drift day falls on the 6th monitored day; "
        "partitions.start for other specs)",
    )
    demo.add_argument(
        "--replay-from",
        type=Path,
        help="a folder of source files (named like source.path's file name) copied into place "
        "one day at a time, as if each day arrived then",
    )
    rollback = commands.add_parser(
        "rollback", help="move the champion back to the version it replaced"
    )
    add_spec_arguments(rollback)
    rollback.add_argument("--reason", required=True, help="why (recorded on both versions)")
    rollback.add_argument("--to-version", default="", help="a blessed version (default: previous)")
    commands.add_parser("demo-data", help="write the bundled demo dataset into MLOPS_HOME")
    relocate = commands.add_parser(
        "relocate", help="point a moved or restored MLOPS_HOME's records at where it is now"
    )
    add_spec_arguments(relocate)
    retire = commands.add_parser("retire", help="archive a model version (docs/governance.md)")
    reproduce = commands.add_parser(
        "reproduce", help="retrain a model version from its recorded inputs, compare metrics"
    )
    for sub in (retire, reproduce):
        add_spec_arguments(sub)
        sub.add_argument("--version", required=True, help="registered model version")
    retire.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    retire.add_argument("--force", action="store_true", help="allow retiring the champion")
    reproduce.add_argument("--json", action="store_true", help="print the result as JSON")
    serve = commands.add_parser(
        "serve", help="the champion behind an HTTP endpoint (every pipeline unless one is named)"
    )
    add_spec_arguments(serve)
    from mlops_assets.serving.server import add_serve_arguments, serve_command

    add_serve_arguments(serve)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)

    from mlops_assets.demo_data import write_demo_data

    if args.command == "demo-data":
        files = write_demo_data()
        print(f"{len(files)} demo files in {files[0].parent}")
        return 0
    if args.config:
        os.environ["MLOPS_CONFIG"] = str(args.config)
    try:
        spec = choose_spec(args.config, args.model, Path.cwd())
        check_model_params(spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "retire":
        defs = build_definitions(spec)
        return retire_command(
            spec, defs, prepare_dagster_home(), args.version, args.reason, args.force
        )
    if args.command == "reproduce":
        return reproduce_command(spec, args.version, args.json)
    if args.command == "rollback":
        return rollback_command(spec, args.reason, args.to_version)
    if args.command == "relocate":
        return relocate_command(spec)
    start, monitor_days = default_story(spec, args.train_days)
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_demo(
            spec,
            build_definitions(spec),
            args.train_days,
            args.start or start,
            monitor_days if args.monitor_days is None else args.monitor_days,
            args.replay_from,
        )
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 1 if summary["runs_failed"] else 0
