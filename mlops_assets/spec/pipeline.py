"""The whole spec: a dataset, its model and its gates, checked across sections."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlops_assets.spec.alerts import AlertsSpec
from mlops_assets.spec.base import DEMO_SPEC_PATH, METRICS_BY_TASK, StrictModel, Task, repeated
from mlops_assets.spec.dataset import (
    ExpectationSpec,
    FeatureSpec,
    LabelSourceSpec,
    PartitionSpec,
    SourceSpec,
)
from mlops_assets.spec.governance import GovernanceSpec
from mlops_assets.spec.model import GateSpec, ModelSpec, unusable_threshold
from mlops_assets.spec.monitoring import PREDICTION_COLUMN, MonitoringSpec, ServingSpec
from mlops_assets.spec.yaml_text import parse_yaml


class PipelineSpec(StrictModel):
    """A dataset, its model and its gates: everything the asset graph needs."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    description: str = ""
    source: SourceSpec
    labels: LabelSourceSpec | None = Field(
        default=None,
        description="Labels as their own daily files, delivered label_delay_days after their "
        "events; omitted: the label is a column of the source, counted once due.",
    )
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
    online_features: bool = Field(
        default=False,
        description="Write each ingested day's newest feature values per entity to the Feast "
        "online store (the online_features asset, which the online endpoint reads); off the "
        "path of batch_predictions and drift_report. Off: no online writes.",
    )
    engine: Literal["pandas", "spark"] = Field(
        default="pandas",
        description="Data plane engine. pandas: each step holds its partition in one process "
        "(embedded default). spark: read, validate, features, point-in-time joins, scoring and "
        "the drift sample run as Spark DataFrames on the `spark` resource (SparkResource, "
        "local[2] by default; pyspark and Java 17 needed; docs/deployment.md).",
    )
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
    def _spark_engine_fits(self) -> PipelineSpec:
        """What the spark engine does not build yet is refused, not silently dropped."""
        if self.engine != "spark":
            return self
        if self.labels is not None:
            raise ValueError("labels: a label source is not supported with engine: spark yet")
        if self.gate.shadow_days > 0:
            raise ValueError(
                "gate.shadow_days: shadow scoring is not supported with engine: spark yet (a "
                "challenger would never be promoted); set it to 0"
            )
        if self.serving.monitor_online:
            raise ValueError(
                "serving.monitor_online: online traffic monitoring is not supported with "
                "engine: spark yet; set it to false"
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
        return self._absolute(self.source)

    def labels_pattern(self) -> str:
        """The label source's path, expanded and absolute like source_pattern."""
        if self.labels is None:
            raise ValueError(f"pipeline {self.name} has no label source (spec `labels:`)")
        return self._absolute(self.labels)

    def _absolute(self, source: SourceSpec) -> str:
        path = Path(source.expanded_path(str(self.spec_path)))
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return str(path if path.is_absolute() else base / path)

    @property
    def is_bundled_demo(self) -> bool:
        """The bundled demo spec: its file, or the same spec declared elsewhere (the repo's
        defs/loan_default/defs.yaml), whose data the CLI writes day by day."""
        if self.spec_path == DEMO_SPEC_PATH.resolve():
            return True
        return self.model_dump() == bundled_demo_spec().model_dump()


@cache
def bundled_demo_spec() -> PipelineSpec:
    """The bundled demo spec (mlops_assets/demo_spec.yaml)."""
    raw = parse_yaml(DEMO_SPEC_PATH.read_text(encoding="utf-8"))
    return PipelineSpec.model_validate({**raw, "spec_path": DEMO_SPEC_PATH})
