"""The demo story: days of data arrive one at a time and the sensors decide what runs.

Each simulated day: the day's source file arrives (the bundled demo writes it then), the
`new_data_sensor` is ticked through Dagster's sensor API (the code the daemon runs) and its run
requests for that day are launched; then the `drift_sensor` is ticked and its retraining or
rollback requests are launched. Runs carry the `dagster/run_key` and `dagster/sensor_name` tags
the daemon would set, and a request whose run_key already ran is dropped, as the daemon does.
"""

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import DagsterInstance, Definitions, RunRequest, RunsFilter, build_sensor_context

from mlops_assets.keys import (
    DAILY_JOB,
    DRIFT_SENSOR,
    NEW_DATA_SENSOR,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
    base_name,
    scoped_name,
)
from mlops_assets.spec import PipelineSpec

MAX_ROUNDS_PER_DAY = 6


class SensorTicker:
    """Ticks one sensor with a persistent cursor, like the daemon does between ticks."""

    def __init__(self, defs: Definitions, instance: DagsterInstance, name: str) -> None:
        self.defs, self.instance, self.name = defs, instance, name
        self.sensor = defs.resolve_sensor_def(name)
        self.cursor: str | None = None

    def tick(self) -> tuple[list[RunRequest], str | None]:
        with build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs
        ) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        for event in data.asset_events:  # the daemon stores these with the tick
            self.instance.report_runless_asset_event(event)
        return list(data.run_requests or []), data.skip_message


def already_launched(instance: DagsterInstance, sensor: str, run_key: str) -> bool:
    runs = instance.get_runs(
        filters=RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor}), limit=1
    )
    return bool(runs)


def launch(
    defs: Definitions,
    instance: DagsterInstance,
    sensor: str,
    request: RunRequest,
    summarize: Any,
) -> dict[str, Any] | None:
    """Execute a sensor's run request in process; None when its run_key already ran. The
    summary names the job by its base name (`retrain`, not `<pipeline>__retrain`)."""
    if request.run_key and already_launched(instance, sensor, request.run_key):
        return None
    job = defs.resolve_job_def(request.job_name)
    tags = {**request.tags, SENSOR_NAME_TAG: sensor}
    if request.run_key:
        tags[RUN_KEY_TAG] = request.run_key
    started = time.monotonic()
    result = job.execute_in_process(
        partition_key=request.partition_key,
        run_config=request.run_config or None,
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )
    job_name = base_name(request.job_name)
    summary = summarize(result, request.partition_key, job_name, time.monotonic() - started)
    summary["run_key"] = request.run_key
    return summary


def describe(request: RunRequest) -> dict[str, Any]:
    job = base_name(request.job_name)
    return {"job": job, "partition": request.partition_key, "run_key": request.run_key}


def run_story(
    spec: PipelineSpec,
    defs: Definitions,
    instance: DagsterInstance,
    days: list[date],
    arrive: Any,
    summarize: Any,
) -> list[dict[str, Any]]:
    """Simulate `days`: `arrive(day)` makes the day's source file appear, then both sensors
    are ticked in turn and their requests launched until neither asks for more (at most
    MAX_ROUNDS_PER_DAY rounds), as the daemon would over a few minutes."""
    tickers = {
        name: SensorTicker(defs, instance, scoped_name(spec, name))
        for name in (NEW_DATA_SENSOR, DRIFT_SENSOR)
    }
    daily = scoped_name(spec, DAILY_JOB)
    story = []
    for day in days:
        key = day.isoformat()
        record: dict[str, Any] = {"day": key, "started_at": datetime.now(UTC).isoformat()}
        record.update({name: {"run_requests": [], "skip": None} for name in tickers})
        record["runs"] = []
        arrive(day)
        for _round in range(MAX_ROUNDS_PER_DAY):
            launched = 0
            for name, ticker in tickers.items():
                requests, skip = ticker.tick()
                # Days before this one were processed before the story: not re-run.
                requests = [r for r in requests if r.job_name != daily or r.partition_key >= key]
                record[name]["run_requests"] += [describe(r) for r in requests]
                if skip and skip not in (record[name]["skip"] or ""):
                    record[name]["skip"] = "; ".join(filter(None, [record[name]["skip"], skip]))
                for request in requests:
                    if (run := launch(defs, instance, ticker.name, request, summarize)) is not None:
                        record["runs"].append(run)
                        launched += 1
            if not launched:
                break
        record.update(day_outcome(record["runs"], key))
        record["champion_version"] = champion_now(defs, spec)
        story.append(record)
    return story


def day_outcome(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The day's drift, performance, retraining and gate results, from its run summaries."""
    outcome: dict[str, Any] = {"retraining_runs": [], "gate_verdicts": []}
    for run in runs:
        if "drift" in run and run["partition"] == key:
            outcome["drift"] = run["drift"]
        if "performance" in run:
            outcome["performance"] = run["performance"]
        if run["job"] == "retrain":
            outcome["retraining_runs"].append(
                {"run_id": run["run_id"], "run_key": run["run_key"], "success": run["success"]}
            )
        if "gate" in run:
            outcome["gate_verdicts"].append(run["gate"])
        if "rollback" in run:
            outcome["rollback"] = run["rollback"]
    return outcome


def champion_now(defs: Definitions, spec: PipelineSpec) -> str | None:
    return defs.resources["mlflow"].champion(spec.model_name)


def story_days(first: date, count: int, end: date | None) -> list[date]:
    days = [first + timedelta(days=i) for i in range(count)]
    return [d for d in days if end is None or d < end]
