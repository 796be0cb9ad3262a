"""Automation: the new-data and drift sensors and the nightly training schedule.

Both sensors are idempotent: their cursors remember what they have acted on, and every run
request has a run_key derived from the trigger, so a restart, a second tick or the same drift
seen twice never launches a second run (Dagster drops a run_key it has already launched).
"""

import glob
import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    build_schedule_from_partitioned_job,
    sensor,
)

from mlops_assets.data import partition_day, read_file
from mlops_assets.promotion import ROLLBACK_JOB
from mlops_assets.spec import PipelineSpec

DAILY_JOB = "daily"
RETRAIN_JOB = "retrain"
FEEDBACK_JOB = "label_feedback"
NEW_DATA_SENSOR = "new_data_sensor"
DRIFT_SENSOR = "drift_sensor"
NIGHTLY_SCHEDULE = "nightly_training"
MAX_EVENTS_PER_TICK = 500
TRIGGER_TAG = "mlops/trigger"


def source_signatures(spec: PipelineSpec) -> dict[str, str]:
    """Every file matching the spec's source, with a modification signature."""
    pattern = spec.source_pattern().replace("{date}", "*")
    signatures = {}
    for path in sorted(glob.glob(pattern)):
        stat = os.stat(path)
        signatures[path] = f"{stat.st_mtime_ns}:{stat.st_size}"
    return signatures


def file_days(spec: PipelineSpec, path: str) -> set[date]:
    """The partition days a source file holds: from the `{date}` in its name, else from its
    timestamps."""
    if "{date}" in spec.source.path:
        prefix, _, suffix = spec.source_pattern().partition("{date}")
        stem = path.removeprefix(prefix).removesuffix(suffix)
        try:
            return {date.fromisoformat(stem)}
        except ValueError:
            return set()
    import pandas as pd

    stamps = pd.to_datetime(
        read_file(spec, Path(path))[spec.timestamp], utc=True, errors="coerce"
    ).dropna()
    return set(stamps.dt.date)


def in_partitions(spec: PipelineSpec, day: date, today: date) -> bool:
    end = spec.partitions.end
    return spec.partitions.start <= day <= today and (end is None or day < end)


def build_new_data_sensor(spec: PipelineSpec, daily_job: Any, feedback_job: Any) -> Any:
    lag = spec.monitoring.performance.label_delay_days

    @sensor(
        name=NEW_DATA_SENSOR,
        jobs=[daily_job, feedback_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="New or changed source files for a day -> the `daily` job for that "
        "partition (validation first; downstream only if its blocking checks pass). Once a "
        f"day's labels are due ({lag} day(s) later) -> `{FEEDBACK_JOB}` for it.",
    )
    def new_data_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        current = source_signatures(spec)
        changed = {path: sig for path, sig in current.items() if seen.get(path) != sig}
        today = datetime.now(UTC).date()
        by_day: dict[date, list[str]] = {}
        for path in changed:
            for day in file_days(spec, path):
                if in_partitions(spec, day, today):
                    by_day.setdefault(day, []).append(path)
        requests = [
            RunRequest(
                run_key=f"{DAILY_JOB}:{day}:{digest(changed, paths)}",
                job_name=DAILY_JOB,
                partition_key=day.isoformat(),
                tags={TRIGGER_TAG: "new source files"},
            )
            for day, paths in sorted(by_day.items())
        ]
        requests += feedback_requests(context, spec, lag)
        if not requests:
            return SkipReason(
                f"no new source files for a partition ({len(current)} files seen) and no labels due"
            )
        return SensorResult(run_requests=requests, cursor=json.dumps({**seen, **changed}))

    return new_data_sensor


def digest(signatures: dict[str, str], paths: list[str]) -> str:
    text = "|".join(f"{p}={signatures[p]}" for p in sorted(paths))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def feedback_requests(
    context: SensorEvaluationContext, spec: PipelineSpec, lag: int
) -> list[RunRequest]:
    """model_performance for every validated day whose labels are due and not yet evaluated."""
    validated = context.instance.get_materialized_partitions(AssetKey("validated_data"))
    if not validated:
        return []
    newest = max(partition_day(p) for p in validated)
    evaluated = context.instance.get_materialized_partitions(AssetKey("model_performance"))
    due = sorted(
        p
        for p in validated - evaluated
        if partition_day(p) + timedelta(days=lag) <= newest and batch_scored(context, p)
    )
    return [
        RunRequest(
            run_key=f"{FEEDBACK_JOB}:{p}",
            job_name=FEEDBACK_JOB,
            partition_key=p,
            tags={TRIGGER_TAG: f"labels due ({lag} day(s) after the partition)"},
        )
        for p in due
    ]


def batch_scored(context: SensorEvaluationContext, partition: str) -> bool:
    """Only days a champion scored have something to evaluate."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("batch_predictions"), asset_partitions=[partition]),
        limit=1,
    )
    return bool(records.records)


def build_drift_sensor(spec: PipelineSpec, retrain_job: Any, rollback_job: Any) -> Any:
    monitoring = spec.monitoring
    cooldown = monitoring.retrain_cooldown_days

    @sensor(
        name=DRIFT_SENSOR,
        jobs=[retrain_job, rollback_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Reads new drift_report and model_performance results: drift share above "
        f"{monitoring.drift.drift_share} or a performance drop beyond tolerance -> `retrain` for "
        f"that partition (at most once per {cooldown} day(s)); a champion worse than the "
        "version it replaced -> `rollback`.",
    )
    def drift_sensor(context: SensorEvaluationContext) -> SensorResult:
        state = json.loads(context.cursor) if context.cursor else {}
        after = int(state.get("storage_id", 0))
        last_retrain = last_retrain_partition(context)
        records = sorted(
            (
                record
                for key in ("drift_report", "model_performance")
                for record in context.instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=AssetKey(key), after_storage_id=after),
                    limit=MAX_EVENTS_PER_TICK,
                    ascending=True,
                ).records
            ),
            key=lambda r: r.storage_id,
        )
        requests: list[RunRequest] = []
        decisions: list[str] = []
        for record in records:
            after = max(after, record.storage_id)
            request, decision = decide_on(record, spec, last_retrain)
            decisions.append(decision)
            if request is not None and request.run_key not in {r.run_key for r in requests}:
                context.log.info(decision)
                requests.append(request)
                if request.job_name == RETRAIN_JOB:
                    last_retrain = request.partition_key
        cursor = json.dumps({"storage_id": after})
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        reason = "; ".join(decisions) or "no new drift_report or model_performance results"
        return SensorResult(skip_reason=SkipReason(reason[:2000]), cursor=cursor)

    return drift_sensor


def last_retrain_partition(context: SensorEvaluationContext) -> str | None:
    """The partition of the latest retraining this sensor launched, read from the instance (not
    the cursor), so the cooldown survives a lost cursor."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=RETRAIN_JOB, tags={"dagster/sensor_name": DRIFT_SENSOR}),
        limit=1,
    )
    return runs[0].tags.get("dagster/partition") if runs else None


def decide_on(
    record: Any, spec: PipelineSpec, last_retrain: str | None
) -> tuple[RunRequest | None, str]:
    """The sensor's decision on one drift_report / model_performance materialization."""
    asset = record.asset_key.to_user_string()
    partition = record.partition_key
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    version = meta.get("model_version")
    if asset == "model_performance" and meta.get("rollback_recommended"):
        reason = (
            f"model_performance {partition}: champion v{version} is worse than the version it "
            f"replaced (v{meta.get('replaced_version')}) on labelled data"
        )
        return (
            RunRequest(
                # One rollback per champion version, whatever the number of days behind it.
                run_key=f"{ROLLBACK_JOB}:from-v{version}",
                job_name=ROLLBACK_JOB,
                run_config={
                    "ops": {
                        "rollback_champion": {
                            "config": {"reason": reason, "from_version": str(version)}
                        }
                    }
                },
                tags={TRIGGER_TAG: reason[:255]},
            ),
            f"rollback requested: {reason}",
        )
    if asset == "drift_report":
        flagged = bool(meta.get("drift_detected"))
        why = (
            f"drift_report {partition}: drift share {meta.get('drift_share', 0):.2f} "
            f"(threshold {spec.monitoring.drift.drift_share}) against v{version}"
        )
    else:
        flagged = bool(meta.get("degraded"))
        worse = meta.get("degraded_metrics")
        why = f"model_performance {partition}: v{version} " + (
            f"degraded on {worse}" if worse else "within tolerance"
        )
    if not flagged:
        return None, f"no action: {why}"
    cooldown = spec.monitoring.retrain_cooldown_days
    if (
        last_retrain
        and abs((partition_day(partition) - partition_day(last_retrain)).days) < cooldown
    ):
        return None, f"no action (retrained for {last_retrain}, cooldown {cooldown} days): {why}"
    return (
        RunRequest(
            run_key=f"{RETRAIN_JOB}:{partition}:champion-v{version}",
            job_name=RETRAIN_JOB,
            partition_key=partition,
            tags={TRIGGER_TAG: why[:255]},
        ),
        f"retraining requested: {why}",
    )


def build_nightly_schedule(spec: PipelineSpec, retrain_job: Any) -> Any:
    """Nightly continuous training of the previous day's partition; on only if the spec says."""
    return build_schedule_from_partitioned_job(
        retrain_job,
        name=NIGHTLY_SCHEDULE,
        hour_of_day=spec.monitoring.nightly_cron_hour,
        description="Continuous training: retrain, gate and promote on yesterday's partition.",
        default_status=DefaultScheduleStatus.RUNNING
        if spec.monitoring.nightly_training
        else DefaultScheduleStatus.STOPPED,
        tags={TRIGGER_TAG: "nightly schedule"},
    )
