"""The pipeline spec: one YAML file that describes a dataset, its model and its gates.

The spec is validated by pydantic; every error names the file, the key and the rule. One module
per group of sections: `base` (strict model, task, metrics), `dataset`, `model` (window and
gate), `monitoring` (and serving), `alerts`, `governance`, `pipeline` (the whole spec),
`yaml_text` and `loading` (the file).

>>> from mlops_assets.spec import bundled_demo_spec
>>> bundled_demo_spec().task.value
'binary_classification'
"""

from mlops_assets.spec.alerts import (
    ALERT_EVENTS,
    AlertChannelBase,
    AlertChannelSpec,
    AlertEvent,
    AlertSeverity,
    AlertsSpec,
    EmailChannelSpec,
    SecretEnv,
    SlackChannelSpec,
    TeamsChannelSpec,
    WebhookChannelSpec,
)
from mlops_assets.spec.base import (
    DEMO_SPEC_PATH,
    HOME_VARIABLE,
    METRIC_RANGES,
    METRICS_BY_TASK,
    PATH_VARIABLE,
    SpecError,
    StrictModel,
    Task,
    metric_gain,
    path_variables,
    repeated,
)
from mlops_assets.spec.dataset import (
    ExpectationSpec,
    FeatureSpec,
    LabelSourceSpec,
    PartitionSpec,
    SourceSpec,
)
from mlops_assets.spec.governance import (
    CalibrationSpec,
    FairnessSpec,
    GovernanceSpec,
    SliceSpec,
    SliceTolerance,
)
from mlops_assets.spec.loading import (
    check_model_params,
    format_errors,
    load_spec,
)
from mlops_assets.spec.model import (
    ChangeThreshold,
    GateSpec,
    ModelSpec,
    ValueThreshold,
    WindowSpec,
    unusable_threshold,
)
from mlops_assets.spec.monitoring import (
    DRIFT_METHODS,
    PREDICTION_COLUMN,
    DriftSpec,
    DriftTestSpec,
    MonitoringSpec,
    PerformanceSpec,
    ServingSpec,
)
from mlops_assets.spec.pipeline import (
    PipelineSpec,
    bundled_demo_spec,
)
from mlops_assets.spec.yaml_text import (
    DuplicateKeyError,
    parse_yaml,
    read_text,
    refuse_duplicate_keys,
)

__all__ = [
    "ALERT_EVENTS",
    "AlertChannelBase",
    "AlertChannelSpec",
    "AlertEvent",
    "AlertSeverity",
    "AlertsSpec",
    "CalibrationSpec",
    "ChangeThreshold",
    "DEMO_SPEC_PATH",
    "DRIFT_METHODS",
    "DriftSpec",
    "DriftTestSpec",
    "DuplicateKeyError",
    "EmailChannelSpec",
    "ExpectationSpec",
    "FairnessSpec",
    "FeatureSpec",
    "LabelSourceSpec",
    "GateSpec",
    "GovernanceSpec",
    "HOME_VARIABLE",
    "METRICS_BY_TASK",
    "METRIC_RANGES",
    "ModelSpec",
    "MonitoringSpec",
    "PATH_VARIABLE",
    "PREDICTION_COLUMN",
    "PartitionSpec",
    "PerformanceSpec",
    "PipelineSpec",
    "SecretEnv",
    "ServingSpec",
    "SlackChannelSpec",
    "SliceSpec",
    "SliceTolerance",
    "SourceSpec",
    "SpecError",
    "StrictModel",
    "Task",
    "TeamsChannelSpec",
    "ValueThreshold",
    "WebhookChannelSpec",
    "WindowSpec",
    "bundled_demo_spec",
    "check_model_params",
    "format_errors",
    "load_spec",
    "metric_gain",
    "parse_yaml",
    "path_variables",
    "read_text",
    "refuse_duplicate_keys",
    "repeated",
    "unusable_threshold",
]
