"""Names shared between modules: Dagster run tags and MLflow model-version tags that one
module writes and another reads. A rename here is a rename everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import AssetIn, AssetKey

# Dagster run tags
TRIGGER_TAG = "mlops/trigger"  # why a sensor or schedule launched the run
CHANGE_DAY_TAG = "mlops/change_day"  # the change a retraining adapts to (since_change window)
ALARM_PARTITION_TAG = "mlops/alarm_partition"  # the partition whose evidence raised the alarm

# MLflow model-version tags
WINDOW_POLICY_TAG = "mlops.window_policy"
CHANGE_DAY_VERSION_TAG = "mlops.change_day"
LABEL_CUTOFF_TAG = "mlops.label_cutoff"
REFERENCE_TAG = "mlops.drift_reference"
TRIGGER_VERSION_TAG = "mlops.trigger"
ALARM_VERSION_TAG = "mlops.alarm_partition"
REPLACED_TAG = "mlops.replaced_version"  # on a promoted version: the champion it replaced
INTENT_TAG = "mlops.alias_intent"  # a champion move in progress (see alias_moves.py)

# Pipeline-scoped names. Many pipelines share one code location, so every asset key carries the
# pipeline's name as its prefix (`loan_default/raw_data`) and every job, sensor and schedule
# name starts with it (`loan_default__daily`). Modules name the base names below (or an asset's
# name) and build the full names with asset_key / scoped_name, never by hand.

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


def asset_ins(pipeline: Any, *assets: str) -> dict[str, AssetIn]:
    """`ins=` for an asset whose parameters named `assets` load those assets of the pipeline."""
    from dagster import AssetIn

    return {name: AssetIn(key=asset_key(pipeline, name)) for name in assets}


def base_name(name: str) -> str:
    """The base name of a pipeline's job, sensor or schedule name (`daily` for
    `loan_default__daily`), or the asset name of a step key: the inverse of scoped_name and
    step_key (no base name or asset name holds the separator)."""
    return name.rpartition(SCOPE_SEPARATOR)[2]


def step_key(pipeline: Any, asset: str) -> str:
    """The Dagster step (op) key of one of the pipeline's assets, `<pipeline>__<asset>`: what
    run logs, failures and per-step executor config (deploy/k8s) name."""
    return asset_key(pipeline, asset).to_python_identifier()
