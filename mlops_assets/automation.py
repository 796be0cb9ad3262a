"""Automation: the new-data and drift sensors and the nightly training schedule.

Both sensors are idempotent: their cursors remember what they have acted on, and every run
request has a run_key derived from the trigger, so a restart, a second tick or the same drift
seen twice never launches a second run (Dagster drops a run_key it has already launched).
"""

import glob
import hashlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from dagster import (
    AssetObservation,
    AssetRecordsFilter,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    build_schedule_from_partitioned_job,
    sensor,
)

from mlops_assets.data import day_of_path, partition_day, read_file
from mlops_assets.followups import followup_request
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    CHANGE_DAY_TAG,
    DAILY_JOB,
    DRIFT_SENSOR,
    FEEDBACK_JOB,
    FOLLOWUP_TAG,
    NEW_DATA_SENSOR,
    NIGHTLY_SCHEDULE,
    RETRAIN_JOB,
    ROLLBACK_JOB,
    ROLLBACK_OP,
    SENSOR_NAME_TAG,
    TRIGGER_TAG,
    Meta,
    asset_key,
    scoped_name,
)
from mlops_assets.label_feedback import feedback_requests, waiting_for_feedback
from mlops_assets.ml.windows import label_cutoff
from mlops_assets.spec import PipelineSpec

MAX_EVENTS_PER_TICK = 500


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
        day = day_of_path(spec, path)
        return set() if day is None else {day}
    import pandas as pd

    stamps = pd.to_datetime(
        read_file(spec, Path(path))[spec.timestamp], utc=True, errors="coerce"
    ).dropna()
    return set(stamps.dt.date)


def in_partitions(spec: PipelineSpec, day: date, today: date) -> bool:
    end = spec.partitions.end
    return spec.partitions.start <= day <= today and (end is None or day < end)


def already_processed(
    context: SensorEvaluationContext, spec: PipelineSpec, signatures: dict[str, str]
) -> dict[str, str]:
    """The cursor of a first tick (the sensor switched on over existing history): the files it
    counts as seen, from what the instance has already materialized.

    The newest day with a `raw_data` materialization is where processing stopped. A file whose
    days all lie on or before it is seen, unless one of its days was processed and the file was
    modified after that day's latest `raw_data` materialization (it changed since: run again).
    Days before it that were never processed are history, left to a backfill; days after it
    are new. With nothing materialized yet, every file is new.
    """
    processed = latest_materializations(context, spec, "raw_data")
    if not processed:
        return {}
    newest = max(partition_day(p) for p in processed)

    def unchanged_history(path: str, signature: str) -> bool:
        modified = int(signature.partition(":")[0]) / 1e9
        return all(
            day <= newest and modified <= processed.get(day.isoformat(), modified)
            for day in file_days(spec, path)
        )

    return {path: sig for path, sig in signatures.items() if unchanged_history(path, sig)}


def latest_materializations(
    context: SensorEvaluationContext, spec: PipelineSpec, asset: str
) -> dict[str, float]:
    """Partition -> timestamp of its latest materialization of the pipeline's `asset`."""
    latest: dict[str, float] = {}
    cursor = None
    while True:
        page = context.instance.fetch_materializations(
            asset_key(spec, asset), limit=1000, cursor=cursor
        )
        for record in page.records:
            if record.partition_key is not None:
                latest[record.partition_key] = max(
                    record.timestamp, latest.get(record.partition_key, 0.0)
                )
        if not page.has_more:
            return latest
        cursor = page.cursor


def build_new_data_sensor(spec: PipelineSpec, daily_job: Any, feedback_job: Any) -> Any:
    lag = spec.monitoring.performance.label_delay_days

    @sensor(
        name=scoped_name(spec, NEW_DATA_SENSOR),
        jobs=[daily_job, feedback_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="New or changed source files for a day -> the `daily` job for that "
        "partition (validation first; downstream only if its blocking checks pass). Once a "
        f"day's labels are due ({lag} day(s) later) -> `{FEEDBACK_JOB}` for it. Switched on "
        "over existing history, it does not re-run days processed since their file last "
        "changed (docs/continuous-training.md).",
    )
    def new_data_sensor(context: SensorEvaluationContext) -> SensorResult:
        current = source_signatures(spec)
        seen: dict[str, str] = (
            json.loads(context.cursor)
            if context.cursor
            else already_processed(context, spec, current)
        )
        changed = {path: sig for path, sig in current.items() if seen.get(path) != sig}
        today = datetime.now(UTC).date()
        by_day: dict[date, list[str]] = {}
        for path in changed:
            for day in file_days(spec, path):
                if in_partitions(spec, day, today):
                    by_day.setdefault(day, []).append(path)
        feedback = feedback_requests(context, spec, lag, arrived_day(spec, current))
        hold = waiting_for_feedback(context, spec, feedback) if by_day else None
        requests = feedback + [
            RunRequest(
                run_key=f"{DAILY_JOB}:{day}:{digest(changed, paths)}",
                job_name=daily_job.name,
                partition_key=day.isoformat(),
                tags={TRIGGER_TAG: "new source files"},
            )
            for day, paths in sorted(by_day.items())
            if hold is None
        ]
        if not requests:
            reason = (
                f"new source files wait: {hold}"
                if hold
                else f"no new source files for a partition ({len(current)} files seen) and no "
                "labels due"
            )
            # The cursor is kept (a first tick's, from the instance, is stored).
            return SensorResult(skip_reason=SkipReason(reason), cursor=json.dumps(seen))
        # Files of held days stay unseen, so a later tick requests their `daily` run.
        cursor = seen if hold else {**seen, **changed}
        return SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return new_data_sensor


def digest(signatures: dict[str, str], paths: list[str]) -> str:
    text = "|".join(f"{p}={signatures[p]}" for p in sorted(paths))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def arrived_day(spec: PipelineSpec, signatures: dict[str, str]) -> date | None:
    """The newest day whose source file has arrived: the clock of label delivery."""
    days = [d for path in signatures for d in file_days(spec, path)]
    return max(days, default=None)


def build_drift_sensor(spec: PipelineSpec, retrain_job: Any, rollback_job: Any) -> Any:
    monitoring = spec.monitoring
    cooldown = monitoring.retrain_cooldown_days

    @sensor(
        name=scoped_name(spec, DRIFT_SENSOR),
        jobs=[retrain_job, rollback_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Reads new drift_report and model_performance results. Drift share above "
        f"{monitoring.drift.drift_share} or served predictions degraded beyond tolerance raise "
        "an alarm; once labels after the alarm's day are delivered, `retrain` for the newest "
        "labelled day, its window starting at the change (no new retraining within "
        f"{cooldown} day(s) of a promotion); once that retraining moved the champion, one "
        f"follow-up `retrain` per newly labelled day up to {monitoring.followup_days} day(s) "
        "after the change. A champion worse than the version it replaced on days it served -> "
        "one `rollback` from that version.",
    )
    def drift_sensor(context: SensorEvaluationContext) -> SensorResult:
        state = json.loads(context.cursor) if context.cursor else {}
        after = int(state.get("storage_id", 0))
        alarm: dict[str, str] | None = state.get("alarm")
        followed: str | None = state.get("followup")
        records = sorted(
            (
                record
                for key in ("drift_report", "model_performance")
                for record in context.instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=asset_key(spec, key), after_storage_id=after),
                    limit=MAX_EVENTS_PER_TICK,
                    ascending=True,
                ).records
            ),
            key=lambda r: r.storage_id,
        )
        requests: list[RunRequest] = []
        decisions: list[str] = []
        observations = []
        for record in records:
            after = max(after, record.storage_id)
            rollback, evidence, decision = read_evidence(record, spec)
            decisions.append(decision)
            if rollback is not None and rollback.run_key not in {r.run_key for r in requests}:
                context.log.info(decision)
                requests.append(rollback)
            if evidence is not None and (alarm is None or evidence["day"] < alarm["day"]):
                alarm = evidence
            if record.asset_key == asset_key(spec, "model_performance"):
                observations.append(
                    AssetObservation(
                        asset_key=asset_key(spec, "model_performance"),
                        partition=record.partition_key,
                        metadata={"drift_sensor_decision": decision[:1000]},
                    )
                )
        retrain: RunRequest | None = None
        if alarm is not None:
            retrain, decision, keep = retrain_request(context, spec, alarm, cooldown)
            decisions.append(decision)
            if retrain is not None:
                context.log.info(decision)
                requests.append(retrain)
            alarm = alarm if keep else None
        if retrain is None:  # an alarm's retraining trains the same newest day
            now = arrived_day(spec, source_signatures(spec))
            followup, said = followup_request(
                context,
                spec,
                label_cutoff(spec, now, now) if now is not None else None,
                last_promotion_partition(context, spec),
                after,
                followed,
            )
            if said:
                decisions.append(said)
            if followup is not None:
                context.log.info(said)
                requests.append(followup)
                followed = followup.run_key
        cursor = json.dumps({"storage_id": after, "alarm": alarm, "followup": followed})
        reason = "; ".join(decisions) or "no new drift_report or model_performance results"
        return SensorResult(
            run_requests=requests,
            cursor=cursor,
            asset_events=observations,
            skip_reason=None if requests else SkipReason(reason[:2000]),
        )

    return drift_sensor


def last_promotion_partition(context: SensorEvaluationContext, spec: PipelineSpec) -> str | None:
    """The partition of the latest alarm retraining launched by this sensor whose
    model_promotion moved the champion, read from the instance (not the cursor), so the
    cooldown survives a lost cursor. A retraining the gate refused starts no cooldown: the
    alarm stays open for the next delivered labels. Nor does a follow-up (followups.py)."""
    sensor_name = scoped_name(spec, DRIFT_SENSOR)
    records = context.instance.fetch_materializations(
        asset_key(spec, "model_promotion"), limit=MAX_EVENTS_PER_TICK
    ).records
    for record in records:  # newest first
        moved = record.asset_materialization.metadata.get(Meta.CHAMPION_MOVED)
        if moved is None or moved.value is not True:
            continue
        run = context.instance.get_run_by_id(record.run_id)
        if (
            run is not None
            and run.tags.get(SENSOR_NAME_TAG) == sensor_name
            and FOLLOWUP_TAG not in run.tags
        ):
            return record.partition_key
    return None


def read_evidence(
    record: Any, spec: PipelineSpec
) -> tuple[RunRequest | None, dict[str, str] | None, str]:
    """One drift_report / model_performance materialization: a rollback request, an alarm
    (the day of the evidence and why), and the decision in words."""
    asset = record.asset_key.path[-1]  # the asset's name, without the pipeline prefix
    partition = record.partition_key
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    version = meta.get(Meta.MODEL_VERSION)
    if asset == "model_performance" and meta.get(Meta.ROLLBACK_RECOMMENDED):
        reason = (
            f"model_performance {partition}: champion v{version} is worse than the version it "
            f"replaced (v{meta.get(Meta.REPLACED_VERSION)}) on labelled data it served"
        )
        config = {"reason": reason, "from_version": str(version)}
        return (
            # One rollback per champion version, whatever the number of days behind it.
            RunRequest(
                run_key=f"{ROLLBACK_JOB}:from-v{version}",
                job_name=scoped_name(spec, ROLLBACK_JOB),
                run_config={"ops": {scoped_name(spec, ROLLBACK_OP): {"config": config}}},
                tags={TRIGGER_TAG: reason[:255]},
            ),
            None,
            f"rollback requested: {reason}",
        )
    if asset == "drift_report":
        flagged = bool(meta.get(Meta.DRIFT_DETECTED))
        why = (
            f"drift_report {partition}: drift share {meta.get(Meta.DRIFT_SHARE, 0):.2f} "
            f"(threshold {spec.monitoring.drift.drift_share}) against v{version}"
        )
    else:
        champion = meta.get(Meta.CHAMPION_VERSION)
        worse = meta.get(Meta.DEGRADED_METRICS)
        flagged = bool(meta.get(Meta.DEGRADED)) and str(champion) == str(version)
        why = f"model_performance {partition}: served v{version} " + (
            f"degraded on {worse}" if worse else "within tolerance"
        )
        if meta.get(Meta.DEGRADED) and not flagged:
            why += f", but v{champion} is the champion now"
    if not flagged:
        return None, None, f"no action: {why}"
    return None, {"day": partition, "why": why}, f"alarm: {why}"


def retrain_request(
    context: SensorEvaluationContext, spec: PipelineSpec, alarm: dict[str, str], cooldown: int
) -> tuple[RunRequest | None, str, bool]:
    """A retraining for the newest day whose labels are delivered, once that day is on or
    after the alarm's (labels after the change exist); (request, decision, keep the alarm)."""
    now = arrived_day(spec, source_signatures(spec))
    newest = label_cutoff(spec, now, now) if now is not None else None
    if newest is None or newest < partition_day(alarm["day"]):
        return (
            None,
            f"alarm kept until labels of {alarm['day']} are delivered: {alarm['why']}",
            True,
        )
    last = last_promotion_partition(context, spec)
    if last and (newest - partition_day(last)).days < cooldown:
        kept = f"alarm kept (promoted for {last}, cooldown {cooldown} days): {alarm['why']}"
        return None, kept, True
    partition = newest.isoformat()
    return (
        RunRequest(
            # One retraining per alarm day, whatever the partition or a lost cursor re-reads.
            run_key=f"{RETRAIN_JOB}:alarm-{alarm['day']}",
            job_name=scoped_name(spec, RETRAIN_JOB),
            partition_key=partition,
            tags={
                TRIGGER_TAG: alarm["why"][:255],
                ALARM_PARTITION_TAG: alarm["day"],
                CHANGE_DAY_TAG: alarm["day"],
            },
        ),
        f"retraining requested for {partition} (newest labelled day): {alarm['why']}",
        False,
    )


def build_nightly_schedule(spec: PipelineSpec, retrain_job: Any) -> Any:
    """Nightly continuous training of the previous day's partition; on only if the spec says."""
    return build_schedule_from_partitioned_job(
        retrain_job,
        name=scoped_name(spec, NIGHTLY_SCHEDULE),
        hour_of_day=spec.monitoring.nightly_cron_hour,
        description="Continuous training: retrain, gate and promote on yesterday's partition.",
        default_status=DefaultScheduleStatus.RUNNING
        if spec.monitoring.nightly_training
        else DefaultScheduleStatus.STOPPED,
        tags={TRIGGER_TAG: "nightly schedule"},
    )
