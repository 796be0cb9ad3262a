"""Names shared between modules: Dagster run tags and MLflow model-version tags that one
module writes and another reads. A rename here is a rename everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import AssetIn, AssetKey

# Dagster run tags
RUN_KEY_TAG = "dagster/run_key"  # Dagster's own: the run_key of a sensor's request
SENSOR_NAME_TAG = "dagster/sensor_name"  # Dagster's own: the sensor that launched the run
TRIGGER_TAG = "mlops/trigger"  # why a sensor or schedule launched the run
CHANGE_DAY_TAG = "mlops/change_day"  # the change a retraining adapts to (since_change window)
ALARM_PARTITION_TAG = "mlops/alarm_partition"  # the partition whose evidence raised the alarm
FOLLOWUP_TAG = "mlops/followup"  # "<k>/<bound>": a follow-up retraining k days after the change

# Dagster run tags of an audited registry action (governance.record_audit)
ACTION_TAG = "mlops/action"
ACTION_VERSION_TAG = "mlops/model_version"
ACTION_BY_TAG = "mlops/triggered_by"
ACTION_REASON_TAG = "mlops/reason"

# MLflow model-version tags. Booleans are written "true"/"false" (tag_bool) and read with
# is_true, which also accepts the "True"/"False" of versions written before.
KIND_TAG = "mlops.model_kind"  # which model kind (sklearn / torch) wrote and loads the version
PARTITION_TAG = "mlops.partition"  # the partition whose run trained the version
RUN_ID_TAG = "mlops.dagster_run_id"  # that Dagster run
DATA_VERSION_TAG = "mlops.data_version.training_set"
CODE_VERSION_TAG = "mlops.code_version"
SPEC_HASH_TAG = "mlops.spec_hash"
GIT_COMMIT_TAG = "mlops.git_commit"
BLESSED_TAG = "mlops.blessed"  # the gate's verdict
BASELINE_TAG = "mlops.baseline_version"  # the champion the gate judged the version against
GATE_MESSAGE_TAG = "mlops.gate_message"
GATE_PARTITION_TAG = "mlops.gate_partition"
SHADOW_TAG = "mlops.shadow_partitions"  # partitions a challenger was shadow-scored on
RETIRED_TAG = "mlops.retired"
REPRODUCED_TAG = "mlops.reproduced"  # "match" or "mismatch"
REPRODUCED_AT_TAG = "mlops.reproduced_at"
ROLLED_BACK_TO_TAG = "mlops.rolled_back_to"  # on a version rolled back: the version restored
RESTORED_AT_TAG = "mlops.restored_at"  # on the restored version: when, and from which version
RESTORED_FROM_TAG = "mlops.restored_from"
# Audit tags `mlops.<past tense>_{by,at,run_id,reason}` of each audited action
AUDIT_ACTIONS = {
    "promote": "promoted",
    "rollback": "rolled_back",
    "retire": "retired",
    "canary_stop": "canary_stopped",  # the online server's canary monitor (serving/canary.py)
}
WINDOW_POLICY_TAG = "mlops.window_policy"
CHANGE_DAY_VERSION_TAG = "mlops.change_day"
LABEL_CUTOFF_TAG = "mlops.label_cutoff"
REFERENCE_TAG = "mlops.drift_reference"
TRIGGER_VERSION_TAG = "mlops.trigger"
ALARM_VERSION_TAG = "mlops.alarm_partition"
REPLACED_TAG = "mlops.replaced_version"  # on a promoted version: the champion it replaced
INTENT_TAG = "mlops.alias_intent"  # a champion move in progress (see alias_moves.py)


def audit_tag(action: str, field: str) -> str:
    """The MLflow tag of one field (by, at, run_id, reason) of an audited action."""
    return f"mlops.{AUDIT_ACTIONS[action]}_{field}"


def tag_bool(value: bool) -> str:
    """A boolean as an MLflow tag value."""
    return "true" if value else "false"


def is_true(value: str | None) -> bool:
    """An MLflow boolean tag read back ("true", or "True" as older versions wrote it)."""
    return (value or "").lower() == "true"


class Meta:
    """Asset materialization metadata keys that a module other than the writer reads (the
    CLI's run summary, the drift sensor, the alerts sensor)."""

    MODEL_VERSION = "model_version"  # the version that scored / was trained
    MLFLOW_RUN = "mlflow_run"
    HOLDOUT_PREFIX = "holdout_"  # candidate_model: holdout_<metric>
    LIVE_PREFIX = "live_"  # model_performance: live_<metric>
    CANDIDATE_VERSION = "candidate_version"
    BLESSED = "blessed"
    MESSAGE = "message"
    CHAMPION_BEFORE = "champion_before"
    CHAMPION_AFTER = "champion_after"
    CHAMPION_MOVED = "champion_moved"
    CHAMPION_VERSION = "champion_version"
    CHALLENGER = "challenger"  # model_promotion: the blessed candidate became the challenger
    DRIFT_SHARE = "drift_share"
    DRIFT_SHARE_THRESHOLD = "drift_share_threshold"
    DRIFT_DETECTED = "drift_detected"
    DRIFTED_COLUMNS = "drifted_columns"
    PREDICTION_DRIFT = "prediction_drift"
    PREDICTION_DRIFT_SCORE = "prediction_drift_score"
    DRIFT_REPORT_HTML = "drift_report_html"
    DEGRADED = "degraded"
    DEGRADED_METRICS = "degraded_metrics"
    REPLACED_VERSION = "replaced_version"
    ROLLBACK_RECOMMENDED = "rollback_recommended"
    ROW_COUNT = "dagster/row_count"
    # training_set: the window it chose (read by candidate_model for its version tags)
    WINDOW_POLICY = "window_policy"
    CHANGE_DAY = "change_day"
    LABEL_CUTOFF = "label_cutoff"
    DAYS_USED = "days_used"
    # drift_report and model_performance with serving.monitor_online: the online traffic's
    # own values, `online_<key>` (online_drift_share, online_drift_detected, ...)
    ONLINE_PREFIX = "online_"
    # the rollback op's output and its metadata
    SKIPPED = "skipped"
    FROM_VERSION = "from_version"
    TO_VERSION = "to_version"
    REASON = "reason"
    BY = "by"


# Pipeline-scoped names. Many pipelines share one code location, so every asset key carries the
# pipeline's name as its prefix (`loan_default/raw_data`) and every job, sensor and schedule
# name starts with it (`loan_default__daily`). Modules name the base names below (or an asset's
# name) and build the full names with asset_key / scoped_name, never by hand.

# Assets whose data plane runs on Spark; the others (candidate_model, model_promotion,
# model_performance, ...) are the pandas engine's and read the Spark tables they need as pandas.
SPARK_ASSETS = (
    "raw_data",
    "validated_data",
    "features",
    "online_features",
    "training_set",
    "batch_predictions",
    "drift_report",
)

# Jobs
INGEST_JOB = "ingest"
DAILY_JOB = "daily"
RETRAIN_JOB = "retrain"
FEEDBACK_JOB = "label_feedback"
LIFECYCLE_JOB = "lifecycle"
ROLLBACK_JOB = "rollback"
RETIRE_JOB = "retire_model"
# Ops of the rollback and retirement jobs (run config: {"ops": {<scoped op name>: ...}})
ROLLBACK_OP = "rollback_champion"
RETIRE_OP = "retire_model_version"
# Sensors and schedules
NEW_DATA_SENSOR = "new_data_sensor"
DRIFT_SENSOR = "drift_sensor"
ALERTS_SENSOR = "alerts_sensor"
NIGHTLY_SCHEDULE = "nightly_training"

SCOPE_SEPARATOR = "__"


def pipeline_of(name: str) -> str:
    """The pipeline of a scoped job, sensor, schedule or op name (`loan_default` for
    `loan_default__daily`)."""
    return name.rpartition(SCOPE_SEPARATOR)[0]


def pipeline_name(pipeline: Any) -> str:
    """The pipeline's name: `pipeline` itself when a string, else its `.name` (a spec)."""
    return pipeline if isinstance(pipeline, str) else pipeline.name


def scoped_name(pipeline: Any, base: str) -> str:
    """A job, sensor or schedule name of one pipeline: `<pipeline>__<base>`."""
    return f"{pipeline_name(pipeline)}{SCOPE_SEPARATOR}{base}"


def asset_key(pipeline: Any, asset: str) -> AssetKey:
    """The key of one of the pipeline's assets: `AssetKey([<pipeline>, <asset>])`."""
    from dagster import AssetKey  # keys.py stays free of Dagster at import time

    return AssetKey([pipeline_name(pipeline), asset])


def asset_ins(
    pipeline: Any, *assets: str, columns: dict[str, list[str]] | None = None
) -> dict[str, AssetIn]:
    """`ins=` for an asset whose parameters named `assets` load those assets of the pipeline;
    `columns` names, for some of them, the only columns the asset reads: the IO manager loads
    no others (input metadata `columns`, as Dagster's table IO managers take it)."""
    from dagster import AssetIn

    columns = columns or {}
    return {
        name: AssetIn(
            key=asset_key(pipeline, name),
            metadata={"columns": columns[name]} if name in columns else None,
        )
        for name in assets
    }


def base_name(name: str) -> str:
    """The base name of a pipeline's job, sensor or schedule name (`daily` for
    `loan_default__daily`), or the asset name of a step key: the inverse of scoped_name and
    step_key (no base name or asset name holds the separator)."""
    return name.rpartition(SCOPE_SEPARATOR)[2]


def step_key(pipeline: Any, asset: str) -> str:
    """The Dagster step (op) key of one of the pipeline's assets, `<pipeline>__<asset>`: what
    run logs, failures and per-step executor config (deploy/k8s) name."""
    return asset_key(pipeline, asset).to_python_identifier()
