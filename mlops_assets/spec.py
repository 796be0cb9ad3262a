"""The pipeline spec: one YAML file that describes a dataset, its model and its gates.

The spec is validated by pydantic; every error names the file, the key and the rule.
"""

from __future__ import annotations

import os
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlops_resources.storage import expand_home

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


class SpecError(ValueError):
    """A pipeline spec that cannot be used; the message names the file and the offending key."""


class Task(StrEnum):
    binary_classification = "binary_classification"
    multiclass_classification = "multiclass_classification"
    regression = "regression"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(StrictModel):
    """Where the raw data lives.

    `path` is a file or glob of CSV/Parquet files. `{date}` in it is replaced by the partition
    date (YYYY-MM-DD), so one file per day is read; without it every matching file is read and
    rows are kept by event timestamp. Environment variables ($MLOPS_HOME) are expanded and a
    relative path is taken from the spec file's folder.
    """

    path: str
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="File format; inferred from the extension when omitted."
    )
    csv_delimiter: str = ","
    csv_encoding: str = "utf-8"


class FeatureSpec(StrictModel):
    """One feature column, with optional bounds (numeric) or allowed values (categorical)."""

    name: str
    type: Literal["numeric", "categorical"]
    min: float | None = None
    max: float | None = None
    allowed_values: list[str] | None = None
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
    start: date
    end: date | None = Field(default=None, description="Exclusive end; open-ended when omitted.")

    @model_validator(mode="after")
    def _ordered(self) -> PartitionSpec:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"partitions: end {self.end} must be after start {self.start}")
        return self


class ModelSpec(StrictModel):
    kind: Literal["hist_gradient_boosting", "random_forest", "linear", "torch_mlp"] = (
        "hist_gradient_boosting"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    training_window_days: int = Field(default=21, ge=1)
    holdout_days: int = Field(default=3, ge=1)
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


class PipelineSpec(StrictModel):
    """A dataset, its model and its gates: everything the asset graph needs."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    description: str = ""
    source: SourceSpec
    entity_key: str
    timestamp: str
    label: str
    task: Task
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
    spec_path: Path | None = Field(default=None, exclude=True, description="Set by load_spec.")

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [f.name for f in features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
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
        """The source path with environment variables expanded, absolute."""
        path = Path(expand_home(self.source.path))
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return str(path if path.is_absolute() else base / path)

    @property
    def is_bundled_demo(self) -> bool:
        return self.spec_path == DEMO_SPEC_PATH.resolve()


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"invalid pipeline spec {path}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_spec(path: str | os.PathLike[str] | None = None) -> PipelineSpec:
    """Load a spec from `path`, else $MLOPS_CONFIG, else the bundled demo spec."""
    spec_path = Path(path or os.environ.get("MLOPS_CONFIG") or DEMO_SPEC_PATH).expanduser()
    if not spec_path.is_file():
        raise SpecError(f"pipeline spec not found: {spec_path}")
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid pipeline spec {spec_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline spec {spec_path}: expected a mapping at the top level")
    try:
        return PipelineSpec.model_validate({**raw, "spec_path": spec_path.resolve()})
    except ValidationError as exc:
        raise SpecError(_format_errors(spec_path, exc)) from None
