"""The model sections of the spec: the estimator, its training window and the promotion gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mlops_assets.spec.base import METRIC_RANGES, StrictModel


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
        description="When this share of the window's rows is smaller than its newest "
        "holdout_days days (a window of few days, right after a change), the newest fraction "
        "of its rows by timestamp is the holdout.",
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
