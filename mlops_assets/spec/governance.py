"""The governance section of the spec: slices, fairness, calibration and the model card."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, model_validator

from mlops_assets.spec.base import StrictModel


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
