"""The new-data sensor's side of label feedback: which scored days' labels are delivered and
due for model_performance (run once per delivery), and why a new day waits for them."""

from datetime import date

from dagster import (
    AssetRecordsFilter,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
)

from mlops_assets.data import partition_day
from mlops_assets.followups import latest_record
from mlops_assets.keys import (
    DRIFT_SENSOR,
    FEEDBACK_JOB,
    RETRAIN_JOB,
    ROLLBACK_JOB,
    RUN_KEY_TAG,
    TRIGGER_TAG,
    asset_key,
    scoped_name,
)
from mlops_assets.labels import label_signature
from mlops_assets.ml.windows import labels_due
from mlops_assets.spec import PipelineSpec

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def feedback_requests(
    context: SensorEvaluationContext, spec: PipelineSpec, lag: int, now: date | None
) -> list[RunRequest]:
    """model_performance for every scored day whose labels are due (delivered by `now`, the
    newest arrived day; with a label source, also its file on disk) and not yet evaluated.
    A delivery is requested once: a failed run is not retried by the sensor (re-run it from
    the UI); a label file delivered again is a new delivery."""
    validated = context.instance.get_materialized_partitions(asset_key(spec, "validated_data"))
    if not validated or now is None:
        return []
    evaluated = context.instance.get_materialized_partitions(asset_key(spec, "model_performance"))
    requests = []
    for p in sorted(validated - evaluated):
        day = partition_day(p)
        if not labels_due(spec, day, now) or not batch_scored(context, spec, p):
            continue
        run_key = f"{FEEDBACK_JOB}:{p}"
        if spec.labels is not None:
            signature = label_signature(spec, day)
            if signature is None:  # late: the day is evaluated once its file arrives
                continue
            run_key = f"{run_key}:{signature}"
        if requested_before(context, spec, run_key):
            continue
        requests.append(
            RunRequest(
                run_key=run_key,
                job_name=scoped_name(spec, FEEDBACK_JOB),
                partition_key=p,
                tags={TRIGGER_TAG: f"labels due ({lag} day(s) after the partition)"},
            )
        )
    return requests


def requested_before(context: SensorEvaluationContext, spec: PipelineSpec, run_key: str) -> bool:
    """Whether this pipeline's label_feedback already ran (or runs) for `run_key`."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=scoped_name(spec, FEEDBACK_JOB), tags={RUN_KEY_TAG: run_key}),
        limit=1,
    )
    return bool(runs)


def waiting_for_feedback(
    context: SensorEvaluationContext, spec: PipelineSpec, feedback: list[RunRequest]
) -> str | None:
    """Why a new day must wait before it is scored, or None: delivered labels are evaluated,
    and whatever retraining they call for is done, before the next day is served."""
    if feedback:
        return f"labels due for {[r.partition_key for r in feedback]}: evaluated first"
    busy = [
        run
        for job_name in (FEEDBACK_JOB, RETRAIN_JOB, ROLLBACK_JOB)
        for run in context.instance.get_runs(
            filters=RunsFilter(job_name=scoped_name(spec, job_name), statuses=IN_FLIGHT),
            limit=1,
        )
    ]
    if busy:
        return f"run {busy[0].run_id} ({busy[0].job_name}) in flight"
    performance = asset_key(spec, "model_performance")
    latest = context.instance.fetch_materializations(performance, limit=1)
    if latest.records:
        record = latest.records[0]
        seen = context.instance.fetch_observations(
            AssetRecordsFilter(
                asset_key=performance,
                asset_partitions=[record.partition_key],
                after_storage_id=record.storage_id,
            ),
            limit=1,
        )
        if not seen.records:
            return (
                f"model_performance {record.partition_key} not yet read by "
                f"{scoped_name(spec, DRIFT_SENSOR)}"
            )
    return None


def batch_scored(context: SensorEvaluationContext, spec: PipelineSpec, partition: str) -> bool:
    """Only days a champion scored have something to evaluate."""
    return latest_record(context, spec, "batch_predictions", partition) is not None
