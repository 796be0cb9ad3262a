"""Follow-up retrainings: after a change was adopted, keep learning from its growing data.

The drift sensor's first retraining after a change learns from the change day's labels only.
The post-change data then grows by one labelled day a day, while nothing else retrains as long
as the served predictions stay within tolerance. So, for a bounded number of days after a
change whose retraining moved the champion, each newly labelled day gets one more retraining
for that day with the same `mlops/change_day` tag: its `since_change` window grows with the
post-change data, and the gate (candidate and champion on the newest labelled rows) still
decides whether it is promoted.

Follow-ups start no cooldown: they are bounded and answer no evidence, and counting them would
hold off the retraining for a new alarm (the concept moving on, or a second change) for up to
followup_days + retrain_cooldown_days. A new alarm's retraining starts a new change; the
follow-ups then follow that one.

Everything is read from the instance (the change from the newest retraining the sensor
launched, adoption from its promotions), so a lost cursor requests nothing new: the run_key
`retrain:followup-<change_day>-<day>` is the same and Dagster drops it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from dagster import AssetRecordsFilter, RunRequest, RunsFilter, SensorEvaluationContext

from mlops_assets.data import partition_day
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    CHANGE_DAY_TAG,
    DRIFT_SENSOR,
    FOLLOWUP_TAG,
    RETRAIN_JOB,
    SENSOR_NAME_TAG,
    TRIGGER_TAG,
    asset_key,
    scoped_name,
)
from mlops_assets.spec import PipelineSpec


def latest_change_run(context: SensorEvaluationContext, spec: PipelineSpec) -> Any | None:
    """The newest `retrain` run the drift sensor launched with a change day (an alarm's
    retraining or a follow-up), or None."""
    runs = context.instance.get_runs(
        filters=RunsFilter(
            job_name=scoped_name(spec, RETRAIN_JOB),
            tags={SENSOR_NAME_TAG: scoped_name(spec, DRIFT_SENSOR)},
        ),
        limit=10,
    )
    return next((run for run in runs if run.tags.get(CHANGE_DAY_TAG)), None)


def latest_record(
    context: SensorEvaluationContext, spec: PipelineSpec, asset: str, partition: str
) -> Any | None:
    """The newest materialization of one of the pipeline's assets for `partition`, or None."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key(spec, asset), asset_partitions=[partition]),
        limit=1,
    ).records
    return records[0] if records else None


def followup_request(
    context: SensorEvaluationContext,
    spec: PipelineSpec,
    newest: date | None,
    last_promoted: str | None,
    read_up_to: int,
    requested: str | None,
) -> tuple[RunRequest | None, str | None]:
    """One follow-up retraining for `newest` (the newest day whose labels are delivered), or
    None; and the decision in words (None when there is nothing to say).

    `last_promoted` is the partition of the sensor's latest alarm retraining that moved the
    champion (on or after the change: the change is adopted), `read_up_to` the storage id of
    the last result the sensor has read this tick, `requested` the last follow-up this sensor
    requested (its cursor).
    """
    bound = spec.monitoring.followup_days
    if bound == 0 or newest is None:
        return None, None
    run = latest_change_run(context, spec)
    if run is None:
        return None, None
    change = partition_day(run.tags[CHANGE_DAY_TAG])
    after = (newest - change).days
    key = f"{RETRAIN_JOB}:followup-{change}-{newest}"
    trained = partition_day(run.tags.get("dagster/partition", change.isoformat()))
    if after <= 0 or after > bound or newest <= trained:
        return None, None  # nothing newly labelled since the change's last retraining
    if requested == key:
        return None, None
    if last_promoted is None or partition_day(last_promoted) < change:
        return None, (
            f"no follow-up for {newest}: no retraining since the change of {change} moved the "
            "champion (the change is not adopted)"
        )
    day = newest.isoformat()
    if latest_record(context, spec, "batch_predictions", day) is not None:
        performance = latest_record(context, spec, "model_performance", day)
        if performance is None or performance.storage_id > read_up_to:
            return None, f"follow-up for {day} waits until its labels are evaluated"
    why = f"follow-up {after} of {bound} after the change of {change}: labels of {day} delivered"
    return (
        RunRequest(
            run_key=key,
            job_name=scoped_name(spec, RETRAIN_JOB),
            partition_key=day,
            tags={
                TRIGGER_TAG: why,
                CHANGE_DAY_TAG: change.isoformat(),
                FOLLOWUP_TAG: f"{after}/{bound}",
                ALARM_PARTITION_TAG: run.tags.get(ALARM_PARTITION_TAG, change.isoformat()),
            },
        ),
        f"retraining requested for {day} ({why})",
    )
