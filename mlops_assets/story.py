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

from mlops_assets.automation import DAILY_JOB, DRIFT_SENSOR, NEW_DATA_SENSOR
from mlops_assets.spec import PipelineSpec

RUN_KEY_TAG = "dagster/run_key"
SENSOR_TAG = "dagster/sensor_name"


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
        return list(data.run_requests or []), data.skip_message


def already_launched(instance: DagsterInstance, sensor: str, run_key: str) -> bool:
    runs = instance.get_runs(
        filters=RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_TAG: sensor}), limit=1
    )
    return bool(runs)


def launch(
    defs: Definitions,
    instance: DagsterInstance,
    sensor: str,
    request: RunRequest,
    summarize: Any,
) -> dict[str, Any] | None:
    """Execute a sensor's run request in process; None when its run_key already ran."""
    if request.run_key and already_launched(instance, sensor, request.run_key):
        return None
    job = defs.resolve_job_def(request.job_name)
    tags = {**request.tags, SENSOR_TAG: sensor}
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
    summary = summarize(result, request.partition_key, request.job_name, time.monotonic() - started)
    summary["run_key"] = request.run_key
    return summary


def describe(request: RunRequest) -> dict[str, Any]:
    return {"job": request.job_name, "partition": request.partition_key, "run_key": request.run_key}


def run_story(
    spec: PipelineSpec,
    defs: Definitions,
    instance: DagsterInstance,
    days: list[date],
    arrive: Any,
    summarize: Any,
) -> list[dict[str, Any]]:
    """Simulate `days`: `arrive(day)` makes the day's source file appear."""
    new_data = SensorTicker(defs, instance, NEW_DATA_SENSOR)
    drift = SensorTicker(defs, instance, DRIFT_SENSOR)
    pending: dict[tuple[str, str], RunRequest] = {}  # (job, partition) -> request
    story = []
    for day in days:
        key = day.isoformat()
        record: dict[str, Any] = {"day": key, "started_at": datetime.now(UTC).isoformat()}
        arrive(day)
        requests, skip = new_data.tick()
        for request in requests:
            slot = (request.job_name, request.partition_key)
            if request.job_name != DAILY_JOB:
                pending[slot] = request
            elif request.partition_key >= key:
                pending.setdefault(slot, request)
        due = [pending.pop((DAILY_JOB, key))] if (DAILY_JOB, key) in pending else []
        due += [pending.pop(s) for s in sorted(pending) if s[0] != DAILY_JOB and s[1] < key]
        record["new_data_sensor"] = {"run_requests": [describe(r) for r in due], "skip": skip}
        record["runs"] = [
            run
            for request in due
            if (run := launch(defs, instance, NEW_DATA_SENSOR, request, summarize)) is not None
        ]
        requests, skip = drift.tick()
        record["drift_sensor"] = {"run_requests": [describe(r) for r in requests], "skip": skip}
        record["runs"] += [
            run
            for request in requests
            if (run := launch(defs, instance, DRIFT_SENSOR, request, summarize)) is not None
        ]
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
