"""The pipeline spec: one YAML file that describes a dataset, its model and its gates.

The spec is validated by pydantic; every error names the file, the key and the rule.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import date
from enum import StrEnum
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEMO_SPEC_PATH = Path(__file__).parent / "demo_spec.yaml"

# Metrics the trainer reports, with their direction. The gate only accepts these names.
METRICS_BY_TASK: dict[str, dict[str, bool]] = {
    "binary_classification": {
        "roc_auc": True,
        "accuracy": True,
        "f1": True,
        "log_loss": False,
        "brier": False,
    },
    "multiclass_classification": {"accuracy": True, "f1_macro": True, "log_loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True},
}


# The values each metric can take; a threshold outside them could never pass.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(["roc_auc", "accuracy", "f1", "f1_macro", "brier"], (0.0, 1.0)),
    **dict.fromkeys(["log_loss", "rmse", "mae"], (0.0, float("inf"))),
    "r2": (float("-inf"), 1.0),
}


def unusable_threshold(gate: GateSpec) -> str | None:
    """Why a gate threshold lies outside its metric's range, so that it could never be met or
    never fail, else None."""
    for metric, bound in gate.value_thresholds.items():
        low, high = METRIC_RANGES[metric]
        for side, value in (("min", bound.min), ("max", bound.max)):
            if value is None or low <= value <= high:
                continue
            limit = f"at most {high:g}" if value > high else f"at least {low:g}"
            effect = "be met" if (side == "min") == (value > high) else "fail"
            return (
                f"gate.value_thresholds.{metric}: {side} {value} is outside the range of "
                f"{metric} ({metric} is {limit}), so it could never {effect}"
            )
    for metric, change in gate.change_thresholds.items():
        low, high = METRIC_RANGES[metric]
        value = change.min_absolute_change
        if value is None or abs(value) <= high - low:
            continue
        effect = "be met" if value > 0 else "fail"
        return (
            f"gate.change_thresholds.{metric}: min_absolute_change {value} is wider than the "
            f"range of {metric} (it spans at most {high - low:g}), so it could never {effect}"
        )
    return None


def metric_gain(higher_is_better: bool, value: float, baseline: float) -> float:
    """How much better `value` is than `baseline` in the metric's better direction."""
    return value - baseline if higher_is_better else baseline - value


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class SpecError(ValueError):
    """A pipeline spec that cannot be used; the message names the file and the offending key."""


class Task(StrEnum):
    binary_classification = "binary_classification"
    multiclass_classification = "multiclass_classification"
    regression = "regression"


class StrictModel(BaseModel):
    """Every spec section: unknown keys are refused and values are not coerced (`"yes"` is not
    a bool, `"3"` or `3.0` not an int; YAML's own types and an int for a float are accepted).
    NaN and infinity are refused. Enum and date fields also take their text form
    (`Field(strict=False)`), as YAML and the recorded JSON spec write them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# `$NAME` or `${NAME}`, as os.path.expandvars reads them.
PATH_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)
HOME_VARIABLE = "MLOPS_HOME"


def path_variables(path: str) -> list[str]:
    """The environment variables `path` refers to, in order."""
    return [match[1].strip("{}") for match in PATH_VARIABLE.finditer(path)]


class SourceSpec(StrictModel):
    """Where the raw data lives.

    `path` is a file or glob of CSV/Parquet files. `{date}` in it is replaced by the partition
    date (YYYY-MM-DD), so one file per day is read; without it every matching file is read and
    rows are kept by event timestamp. `$MLOPS_HOME` and the variables named in `path_variables`
    are expanded (their values appear in logs, events and the UI, so never name a secret); any
    other `$NAME` is refused. A relative path is taken from the spec file's folder.
    """

    path: str
    path_variables: list[str] = Field(
        default_factory=list,
        description="Environment variables expanded in `path` besides MLOPS_HOME.",
    )
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="File format; inferred from the extension when omitted."
    )
    csv_delimiter: str = Field(default=",", min_length=1)
    csv_encoding: str = "utf-8"

    @model_validator(mode="after")
    def _variables_listed(self) -> SourceSpec:
        allowed = {HOME_VARIABLE, *self.path_variables}
        unlisted = sorted({f"${n}" for n in path_variables(self.path) if n not in allowed})
        if unlisted:
            raise ValueError(
                f"source.path: {unlisted} would be expanded, but only $MLOPS_HOME and the "
                "variables named in source.path_variables are (their values appear in logs, "
                "events and the UI, so never put a secret there)"
            )
        return self

    def expanded_path(self, where: str) -> str:
        """`path` with $MLOPS_HOME (with its default) and the listed variables expanded; a
        listed variable that is not set is an error naming `where` (the spec file)."""

        def value(match: re.Match[str]) -> str:
            name = match[1].strip("{}")
            if name == HOME_VARIABLE:
                from mlops_resources.storage import mlops_home  # storage imports Dagster

                return str(mlops_home())
            if name not in os.environ:
                raise SpecError(
                    f"pipeline spec {where}: source.path: ${name} (in source.path_variables) is "
                    "not set in the environment"
                )
            return os.environ[name]

        return PATH_VARIABLE.sub(value, self.path)


class FeatureSpec(StrictModel):
    """One feature column, with optional bounds (numeric) or allowed values (categorical)."""

    name: str
    type: Literal["numeric", "categorical"]
    min: float | None = None
    max: float | None = None
    allowed_values: list[str] | None = Field(default=None, min_length=1)
    nullable: bool = False

    @model_validator(mode="after")
    def _rules_fit_type(self) -> FeatureSpec:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature '{self.name}': min/max apply to numeric features only")
        if self.type == "numeric" and self.allowed_values is not None:
            raise ValueError(
                f"feature '{self.name}': allowed_values applies to categorical features only"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature '{self.name}': min {self.min} is above max {self.max}")
        return self


class ExpectationSpec(StrictModel):
    """A user-added Great Expectations expectation: its class name in snake case and kwargs."""

    type: str = Field(description="e.g. expect_column_values_to_match_regex")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class PartitionSpec(StrictModel):
    start: date = Field(strict=False)
    end: date | None = Field(
        default=None, strict=False, description="Exclusive end; open-ended when omitted."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PartitionSpec:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"partitions: end {self.end} must be after start {self.start}")
        return self


class WindowSpec(StrictModel):
    """Which labelled days a retraining learns from (see docs/continuous-training.md)."""

    policy: Literal["sliding", "since_change", "weighted"] = Field(
        default="since_change",
        description="sliding: the last training_window_days labelled days; since_change: start "
        "at the first day the drift or performance evidence flagged (when it holds min_rows "
        "labelled rows, else weighted; sliding when nothing was flagged); weighted: the whole "
        "window with exponential recency weights.",
    )
    half_life_days: float = Field(
        default=3.0, gt=0, description="weighted: a row's weight halves every this many days."
    )
    min_rows: int = Field(
        default=300, ge=1, description="since_change: labelled rows needed after the change."
    )
    holdout_fraction: float = Field(
        default=0.34,
        gt=0,
        lt=1,
        description="When the window holds no more days than holdout_days (right after a "
        "change), the newest fraction of its rows by timestamp is the holdout.",
    )


class ModelSpec(StrictModel):
    kind: Literal["hist_gradient_boosting", "random_forest", "linear", "torch_mlp"] = (
        "hist_gradient_boosting"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    training_window_days: int = Field(default=21, ge=1)
    holdout_days: int = Field(default=3, ge=1)
    window: WindowSpec = Field(default_factory=WindowSpec)
    seed: int = 42

    @model_validator(mode="after")
    def _holdout_fits(self) -> ModelSpec:
        if self.holdout_days >= self.training_window_days:
            raise ValueError(
                f"model: holdout_days ({self.holdout_days}) must be smaller than "
                f"training_window_days ({self.training_window_days})"
            )
        return self


class ValueThreshold(StrictModel):
    """An absolute bound on a metric: at least `min` or at most `max`."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ValueThreshold:
        if self.min is None and self.max is None:
            raise ValueError("a value threshold needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"value threshold min {self.min} is above max {self.max}")
        return self


class ChangeThreshold(StrictModel):
    """How the candidate must compare with the champion, in the metric's better direction.

    `min_absolute_change: 0.0` means "no worse than the champion"; a negative value tolerates a
    small regression, a positive one demands an improvement.
    """

    min_absolute_change: float | None = None
    min_relative_change: float | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> ChangeThreshold:
        if self.min_absolute_change is None and self.min_relative_change is None:
            raise ValueError("a change threshold needs min_absolute_change or min_relative_change")
        return self


class GateSpec(StrictModel):
    """Promotion gate. With no thresholds at all nothing is ever promoted (fail closed)."""

    value_thresholds: dict[str, ValueThreshold] = Field(default_factory=dict)
    change_thresholds: dict[str, ChangeThreshold] = Field(default_factory=dict)
    shadow_days: int = Field(
        default=0,
        ge=0,
        description="With a champion in place, a blessed candidate first becomes `challenger` and "
        "is scored beside the champion on this many partitions before it is promoted.",
    )


# Evidently drift methods: p-value tests flag drift below the threshold, distances above it.
DRIFT_METHODS = {
    "ks",
    "chisquare",
    "z",
    "anderson",
    "fisher_exact",
    "cramer_von_mises",
    "g_test",
    "mannw",
    "t_test",
    "empirical_mmd",
    "es",
    "epps_singleton",
    "wasserstein",
    "kl_div",
    "psi",
    "jensenshannon",
    "hellinger",
    "ed",
    "TVD",
}
PREDICTION_COLUMN = "prediction"


class DriftTestSpec(StrictModel):
    """An Evidently drift method and its threshold (None: Evidently's default for the method)."""

    method: str
    threshold: float | None = Field(default=None, gt=0)

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        if method not in DRIFT_METHODS:
            raise ValueError(f"unknown drift method {method!r}; known: {sorted(DRIFT_METHODS)}")
        return method


class DriftSpec(StrictModel):
    """Data and prediction drift against the champion's recorded training reference."""

    numeric: DriftTestSpec = DriftTestSpec(method="wasserstein", threshold=0.1)
    categorical: DriftTestSpec = DriftTestSpec(method="jensenshannon", threshold=0.1)
    columns: dict[str, DriftTestSpec] = Field(
        default_factory=dict, description="Per-column overrides (features or `prediction`)."
    )
    drift_share: float = Field(
        default=0.3, gt=0, le=1, description="Share of drifted features that flags the day."
    )
    severity: Literal["WARN", "ERROR"] = "WARN"
    sample_size: int = Field(
        default=20_000, ge=100, description="Max rows per side; larger inputs are sampled."
    )
    reference_size: int = Field(
        default=10_000, ge=100, description="Rows of training data recorded with each model."
    )


class PerformanceSpec(StrictModel):
    """The champion on labelled data, once labels have arrived."""

    label_delay_days: int = Field(default=1, ge=0)
    max_degradation: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric: how much worse than the training-time holdout is tolerated.",
    )
    severity: Literal["WARN", "ERROR"] = "ERROR"
    rollback_margin: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric: roll back when the champion is worse than the version it "
        "replaced by more than this on the same labelled rows.",
    )


class MonitoringSpec(StrictModel):
    """Monitoring thresholds and the automation that acts on them."""

    drift: DriftSpec = Field(default_factory=DriftSpec)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    retrain_cooldown_days: int = Field(
        default=3, ge=0, description="No new sensor-triggered retraining within this many days."
    )
    nightly_training: bool = Field(default=False, description="Start the nightly schedule on.")
    nightly_cron_hour: int = Field(default=2, ge=0, le=23)


class ServingSpec(StrictModel):
    """The online endpoint (`python -m mlops_assets serve`; docs/serving.md)."""

    refresh_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the server reads the `champion` and `challenger` aliases; a "
        "promotion or rollback serves within this interval (plus the new version's load time).",
    )
    canary_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of entities (sticky per entity key, by hash) answered by the "
        "`challenger` while one exists; the rest get the champion. 0: the challenger only "
        "shadow-scores. Needs monitoring.performance.rollback_margin (the automatic stop).",
    )
    canary_min_labelled: int = Field(
        default=200,
        ge=1,
        description="Labelled rows (POST /feedback) scored by both versions before the canary's "
        "live metric is compared with the champion's.",
    )
    max_batch: int = Field(default=1000, ge=1, description="Most entities in one request.")
    request_log: bool = Field(
        default=True,
        description="Log every answered row (and the other version's shadow prediction) to "
        "Parquet under $MLOPS_HOME/serving/<pipeline>/requests/<day>/.",
    )
    log_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Requests waiting for the shadow scorer and the request log; when full, "
        "new ones are dropped from the log (counted in /metrics), never delayed.",
    )
    monitor_online: bool = Field(
        default=False,
        description="Add the online_predictions asset (a day of the request log) and score it "
        "on the day's labels in model_performance beside batch_predictions.",
    )


# Alerts (docs/alerts.md): the events the alerts sensor sends, and where.
AlertEvent = Literal[
    "data_blocked",
    "drift",
    "performance_degraded",
    "retraining",
    "gate_verdict",
    "rollback",
    "run_failed",
]
ALERT_EVENTS: tuple[str, ...] = get_args(AlertEvent)
AlertSeverity = Literal["info", "warning", "error"]


class SecretEnv(StrictModel):
    """A secret, read from this environment variable (a dagster EnvVar) when a message is sent:
    the spec, the UI, logs and metadata only ever hold the variable's name."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class AlertChannelBase(StrictModel):
    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Unique among the pipeline's channels; names it in the sensor's tick log.",
    )
    events: list[AlertEvent] = Field(
        default_factory=lambda: list(ALERT_EVENTS),
        min_length=1,
        description="The events sent to this channel (default: all).",
    )
    min_severity: AlertSeverity = Field(
        default="info", description="Severity floor: info < warning < error."
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)


class SlackChannelSpec(AlertChannelBase):
    """Slack through dagster-slack (SlackResource, chat.postMessage with a bot token)."""

    type: Literal["slack"]
    token: SecretEnv
    channel: str = Field(min_length=1, description="e.g. #ml-alerts")
    api_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base (a proxy, a test)."
    )


class TeamsChannelSpec(AlertChannelBase):
    """Microsoft Teams through dagster-msteams (an incoming webhook or a Workflows URL)."""

    type: Literal["msteams"]
    hook_url: SecretEnv


class EmailChannelSpec(AlertChannelBase):
    """Email over SMTP."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretEnv | None = None
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _password_has_user(self) -> EmailChannelSpec:
        if self.password is not None and not self.username:
            raise ValueError(f"alert channel '{self.name}': a password needs a username")
        return self


class WebhookChannelSpec(AlertChannelBase):
    """A generic JSON webhook: one POST per digest (docs/alerts.md shows the document)."""

    type: Literal["webhook"]
    url: str | SecretEnv = Field(description="The URL, or {env: NAME} when it holds a token.")
    headers: dict[str, SecretEnv] = Field(
        default_factory=dict, description="Headers sent with every POST, e.g. Authorization."
    )


AlertChannelSpec = Annotated[
    SlackChannelSpec | TeamsChannelSpec | EmailChannelSpec | WebhookChannelSpec,
    Field(discriminator="type"),
]


class AlertsSpec(StrictModel):
    """Where the pipeline's alerts go (none: the alerts sensor has nothing to do)."""

    channels: list[AlertChannelSpec] = Field(default_factory=list)
    dagster_ui_url: str = Field(
        default="",
        description="Base URL of the Dagster UI for links; empty: $MLOPS_DAGSTER_UI_URL, else "
        "http://127.0.0.1:3000.",
    )
    interval_seconds: int = Field(default=30, ge=5, description="Time between sensor ticks.")
    lookback_hours: float = Field(
        default=24,
        gt=0,
        description="Started without a cursor (first start, cursor reset), the sensor reads "
        "events this far back; alerts it already sent are not sent again.",
    )
    attempts: int = Field(default=3, ge=1, le=10, description="Tries per channel per tick.")
    backoff_seconds: float = Field(
        default=1.0, gt=0, le=30, description="Wait before the second try of a tick, doubling."
    )
    max_backoff_seconds: float = Field(
        default=900,
        gt=0,
        description="A channel that failed a tick waits interval_seconds, doubling per failed "
        "tick up to this, before it is tried again.",
    )
    max_pending: int = Field(
        default=100,
        ge=1,
        description="Alerts kept per channel while it cannot be reached; beyond, the oldest are "
        "dropped (and the next message says how many).",
    )
    tick_budget_seconds: float = Field(
        default=30,
        gt=0,
        le=50,
        description="Time one tick may spend sending (the daemon allows a sensor 60 s); "
        "channels not reached wait for the next tick.",
    )

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[Any]) -> list[Any]:
        duplicated = repeated([c.name for c in channels])
        if duplicated:
            raise ValueError(f"duplicated alert channel names: {duplicated}")
        return channels


class SliceSpec(StrictModel):
    """A column to group holdout rows by: a categorical feature as is, a numeric one by `bins`."""

    column: str
    bins: list[float] | None = Field(
        default=None, description="Increasing bin edges for a numeric column, e.g. [18, 40, 110]."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _increasing(self) -> SliceSpec:
        if self.bins is not None and (
            len(self.bins) < 2 or any(b <= a for a, b in pairwise(self.bins))
        ):
            raise ValueError(f"bins of '{self.column}' must be at least 2 increasing edges")
        return self


class SliceTolerance(StrictModel):
    """Gate rule: in no slice may `metric` be worse than the champion's by more than `max_drop`."""

    metric: str
    max_drop: float = Field(ge=0)


class FairnessSpec(StrictModel):
    """Group fairness of the predicted favorable outcome across a sensitive attribute."""

    sensitive_attribute: SliceSpec
    favorable_class: str | None = Field(
        default=None, description="The outcome people want (default: the positive class)."
    )
    min_group_rows: int = Field(default=30, ge=1)
    max_demographic_parity_difference: float | None = Field(default=None, ge=0, le=1)
    max_equal_opportunity_difference: float | None = Field(default=None, ge=0, le=1)
    min_disparate_impact_ratio: float | None = Field(default=None, ge=0, le=1)


class CalibrationSpec(StrictModel):
    """Reliability-curve bins, and an optional calibration step (off by default)."""

    method: Literal["none", "sigmoid", "isotonic"] = "none"
    folds: int = Field(default=3, ge=2)
    bins: int = Field(default=10, ge=2)


class GovernanceSpec(StrictModel):
    """What the model card, the slice/fairness/calibration reports and their gate rules use."""

    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    slices: list[SliceSpec] = Field(default_factory=list)
    slice_by_day: bool = True
    min_slice_rows: int = Field(default=30, ge=1)
    slice_tolerance: SliceTolerance | None = None
    fairness: FairnessSpec | None = None
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)


class PipelineSpec(StrictModel):
    """A dataset, its model and its gates: everything the asset graph needs."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    description: str = ""
    source: SourceSpec
    entity_key: str
    timestamp: str
    label: str
    task: Task = Field(strict=False)
    classes: list[str] | None = Field(
        default=None, description="Known label classes (classification); others fail validation."
    )
    features: list[FeatureSpec] = Field(min_length=1)
    allow_extra_columns: bool = Field(
        default=False, description="Accept source columns the spec does not name."
    )
    partitions: PartitionSpec
    feature_ttl_days: int = Field(default=365, ge=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    expectations: list[ExpectationSpec] = Field(default_factory=list)
    governance: GovernanceSpec = Field(default_factory=GovernanceSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    spec_path: Path | None = Field(default=None, exclude=True, description="Set by load_spec.")

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        duplicated = repeated([f.name for f in features])
        if duplicated:
            raise ValueError(f"duplicated feature names: {duplicated}")
        return features

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        reserved = {self.entity_key, self.timestamp, self.label}
        if len(reserved) != 3:
            raise ValueError("entity_key, timestamp and label must be three different columns")
        clash = sorted(reserved & set(self.feature_names))
        if clash:
            raise ValueError(f"columns {clash} are used both as feature and as key/label")
        if self.classes is not None:
            if not self.is_classification:
                raise ValueError("classes: only classification tasks have classes")
            if self.task == Task.binary_classification and len(set(self.classes)) != 2:
                raise ValueError(f"classes: a binary task needs exactly 2, got {self.classes}")
        known = METRICS_BY_TASK[self.task]
        for section in ("value_thresholds", "change_thresholds"):
            unknown = sorted(set(getattr(self.gate, section)) - set(known))
            if unknown:
                raise ValueError(
                    f"gate.{section}: unknown metric(s) {unknown} for task {self.task.value}; "
                    f"known: {sorted(known)}"
                )
        for metric, bound in self.gate.value_thresholds.items():
            wrong = "max" if known[metric] else "min"
            if getattr(bound, wrong) is not None:
                better = "higher" if known[metric] else "lower"
                raise ValueError(
                    f"gate.value_thresholds.{metric}: {better} is better for {metric}, so give "
                    f"{'min' if known[metric] else 'max'}, not {wrong}"
                )
        unusable = unusable_threshold(self.gate)
        if unusable:
            raise ValueError(unusable)
        columns = sorted(
            set(self.monitoring.drift.columns) - {*self.feature_names, PREDICTION_COLUMN}
        )
        if columns:
            raise ValueError(
                f"monitoring.drift.columns: {columns} are not features or '{PREDICTION_COLUMN}'"
            )
        performance = self.monitoring.performance
        for section in ("max_degradation", "rollback_margin"):
            unknown = sorted(set(getattr(performance, section)) - set(known))
            if unknown:
                raise ValueError(
                    f"monitoring.performance.{section}: unknown metric(s) {unknown} for task "
                    f"{self.task.value}; known: {sorted(known)}"
                )
            negative = sorted(k for k, v in getattr(performance, section).items() if v < 0)
            if negative:
                raise ValueError(
                    f"monitoring.performance.{section}: {negative} must be 0 or more (an amount "
                    "of worsening in the metric's bad direction)"
                )
        return self

    @model_validator(mode="after")
    def _canary_can_stop(self) -> PipelineSpec:
        if self.serving.canary_fraction > 0 and not self.monitoring.performance.rollback_margin:
            raise ValueError(
                "serving.canary_fraction: a canary needs monitoring.performance.rollback_margin "
                "(the metric and margin that stop it automatically)"
            )
        return self

    @model_validator(mode="after")
    def _governance_fits(self) -> PipelineSpec:
        gov = self.governance
        types = {f.name: f.type for f in self.features}
        named = [(f"governance.slices[{i}]", item) for i, item in enumerate(gov.slices)]
        if gov.fairness:
            named.append(
                ("governance.fairness.sensitive_attribute", gov.fairness.sensitive_attribute)
            )
        for key, item in named:
            if item.column not in types:
                raise ValueError(
                    f"{key}.column: '{item.column}' is not a feature (known: {self.feature_names})"
                )
            numeric = types[item.column] == "numeric"
            if numeric != (item.bins is not None):
                rule = "needs bins" if numeric else "is categorical and takes no bins"
                raise ValueError(f"{key}.bins: {types[item.column]} feature '{item.column}' {rule}")
        known = METRICS_BY_TASK[self.task]
        if gov.slice_tolerance and gov.slice_tolerance.metric not in known:
            raise ValueError(
                f"governance.slice_tolerance.metric: unknown metric '{gov.slice_tolerance.metric}' "
                f"for task {self.task.value}; known: {sorted(known)}"
            )
        if gov.fairness and self.task != Task.binary_classification:
            raise ValueError("governance.fairness: only binary_classification tasks are supported")
        favorable = gov.fairness.favorable_class if gov.fairness else None
        if favorable is not None and self.classes and favorable not in self.classes:
            raise ValueError(
                f"governance.fairness.favorable_class: '{favorable}' is not one of {self.classes}"
            )
        if gov.calibration.method != "none" and (
            not self.is_classification or self.model.kind == "torch_mlp"
        ):
            raise ValueError(
                "governance.calibration.method: calibration needs a classification task and a "
                "scikit-learn model kind"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def model_name(self) -> str:
        """Name of the registered model in MLflow."""
        return f"{self.name}_model"

    @property
    def is_classification(self) -> bool:
        return self.task != Task.regression

    def source_pattern(self) -> str:
        """The source path with $MLOPS_HOME and source.path_variables expanded, absolute."""
        path = Path(self.source.expanded_path(str(self.spec_path)))
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return str(path if path.is_absolute() else base / path)

    @property
    def is_bundled_demo(self) -> bool:
        """The bundled demo spec: its file, or the same spec declared elsewhere (the repo's
        defs/loan_default/defs.yaml), whose data the CLI writes day by day."""
        if self.spec_path == DEMO_SPEC_PATH.resolve():
            return True
        return self.model_dump() == bundled_demo_spec().model_dump()


def format_errors(path: Path, error: ValidationError, prefix: str = "") -> str:
    """One line per error: the key (under `prefix`, e.g. `attributes` in a defs.yaml) and the
    rule, after the file's name."""
    lines = [f"invalid pipeline spec {path}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "") or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (YAML itself would keep only the last value)."""


def refuse_duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    """Raise DuplicateKeyError for the first key repeated in a mapping of the composed `node`,
    naming its key path and both lines. Merge keys (`<<: *anchor`) may be overridden."""
    seen: set[int] = set()
    todo = [(node, path)]
    while todo:  # depth first, in document order
        node, path = todo.pop()
        if id(node) in seen:  # an alias, possibly recursive
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(reversed([(item, (*path, str(i))) for i, item in enumerate(node.value)]))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        children = []
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            children.append((value, (*path, name)))
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                raise DuplicateKeyError(
                    f"line {line}: duplicate key {'.'.join((*path, name))} (first at line "
                    f"{lines[key.tag, key.value]}); YAML would silently keep only the last one"
                )
            lines[key.tag, key.value] = line
        todo.extend(reversed(children))


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys (DuplicateKeyError)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_text(spec_path: Path) -> str:
    """The spec file as text; a file that cannot be read or is not UTF-8 is a SpecError."""
    try:
        data = spec_path.read_bytes()
    except OSError as exc:
        raise SpecError(f"pipeline spec {spec_path} cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"invalid pipeline spec {spec_path}: line {line}: not UTF-8 text (byte "
            f"0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def load_spec(path: str | os.PathLike[str] | None = None) -> PipelineSpec:
    """Load a spec from `path`, else $MLOPS_CONFIG, else the bundled demo spec."""
    spec_path = Path(path or os.environ.get("MLOPS_CONFIG") or DEMO_SPEC_PATH).expanduser()
    if not spec_path.is_file():
        raise SpecError(f"pipeline spec not found: {spec_path}")
    text = read_text(spec_path)
    try:
        raw = parse_yaml(text)
    except DuplicateKeyError as exc:
        raise SpecError(f"invalid pipeline spec {spec_path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid pipeline spec {spec_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline spec {spec_path}: expected a mapping at the top level")
    try:
        return PipelineSpec.model_validate({**raw, "spec_path": spec_path.resolve()})
    except ValidationError as exc:
        raise SpecError(format_errors(spec_path, exc)) from None


@cache
def bundled_demo_spec() -> PipelineSpec:
    return load_spec(DEMO_SPEC_PATH)


def check_model_params(spec: PipelineSpec) -> None:
    """Refuse `model.params` the model kind's estimator does not take, or values it rejects,
    naming the spec file, the key and the valid names.

    Not part of load_spec: it imports scikit-learn, and definitions.py must stay light to
    import. The CLI calls it right after load_spec, before anything runs. torch_mlp takes no
    params: its hyperparameters are the torch_executor resource's fields.
    """
    params = spec.model.params
    if not params:
        return
    header = f"invalid pipeline spec {spec.spec_path}:"
    if spec.model.kind == "torch_mlp":
        from mlops_resources.torch_executor import TorchExecutorResource

        raise SpecError(
            f"{header}\n  - model.params: torch_mlp takes no params (got {sorted(params)}); "
            "set its hyperparameters on the torch_executor resource instead, one of "
            f"{sorted(TorchExecutorResource.model_fields)}"
        )
    from sklearn.pipeline import Pipeline

    from mlops_assets.ml.estimators import build_estimator

    bare = spec.model_copy(update={"model": spec.model.model_copy(update={"params": {}})})
    built = build_estimator(bare)
    estimator = (built if isinstance(built, Pipeline) else built.estimator).named_steps["model"]
    cls = type(estimator).__name__
    valid = sorted(estimator.get_params(deep=False))
    unknown = [name for name in params if name not in valid]
    if unknown:
        lines = [header]
        lowered = {v.lower(): v for v in valid}
        for name in unknown:
            close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
            hint = f" (did you mean '{lowered[close[0]]}'?)" if close else ""
            lines.append(f"  - model.params.{name}: not a parameter of {cls}{hint}; valid: {valid}")
        raise SpecError("\n".join(lines))
    try:
        estimator.set_params(**params)
        estimator._validate_params()  # what fit() checks first (scikit-learn >= 1.2)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{header}\n  - model.params: {exc}") from None
