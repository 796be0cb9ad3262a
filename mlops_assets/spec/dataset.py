"""The data sections of the spec: the source files, the features and their rules, user
expectations and the partitions."""

from __future__ import annotations

import os
import re
from datetime import date
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from mlops_assets.spec.base import (
    HOME_VARIABLE,
    PATH_VARIABLE,
    SpecError,
    StrictModel,
    path_variables,
)


class SourceSpec(StrictModel):
    """Where the raw data lives.

    `path` is a file or glob of CSV/Parquet files. `{date}` in it is replaced by the partition
    date (YYYY-MM-DD), so one file per day is read; without it every matching file is read and
    rows are kept by event timestamp. `$MLOPS_HOME` and the variables named in `path_variables`
    are expanded (their values appear in logs, events and the UI, so never name a secret); any
    other `$NAME` is refused. A relative path is taken from the spec file's folder.
    """

    section: ClassVar[str] = "source"  # the spec section, in error messages

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
                f"{self.section}.path: {unlisted} would be expanded, but only $MLOPS_HOME and "
                f"the variables named in {self.section}.path_variables are (their values appear "
                "in logs, "
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
                    f"pipeline spec {where}: {self.section}.path: ${name} (in "
                    f"{self.section}.path_variables) is not set in the environment"
                )
            return os.environ[name]

        return PATH_VARIABLE.sub(value, self.path)


class LabelSourceSpec(SourceSpec):
    """Labels delivered as their own files (docs/configuration.md#labels).

    `path` holds `{date}`: the day of the events a file labels. A file counts only from that day
    plus `monitoring.performance.label_delay_days` on (its delivery, by the newest arrived
    source day), whatever is on disk earlier. Its rows hold the entity key, the event timestamp
    and the label, and join the features on entity key + timestamp; the feature source then
    holds no label column.
    """

    section: ClassVar[str] = "labels"

    @model_validator(mode="after")
    def _one_file_a_day(self) -> LabelSourceSpec:
        if "{date}" not in self.path:
            raise ValueError(
                "labels.path: needs {date}, the day of the events a file labels (one file a "
                "day, delivered label_delay_days later)"
            )
        return self


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
