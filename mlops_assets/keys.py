"""Names shared between modules: Dagster run tags and MLflow model-version tags that one
module writes and another reads. A rename here is a rename everywhere."""

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
