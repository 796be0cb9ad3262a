"""Label time and training windows: which labelled days a training or evaluation set may use.

Pure logic, no Dagster. Labels of day d are delivered `label_delay_days` after d: a run made
when the newest arrived day is `now` may use labels of days up to `now - label_delay_days`, and
never those of a later day (honest time). Within that, the window policy picks the days:

    sliding       the last training_window_days labelled days
    since_change  from the first flagged day (drift or degraded performance) when it holds
                  min_rows labelled rows; else weighted; sliding when nothing was flagged
    weighted      the whole window, each row weighted 0.5 ** (age_days / half_life_days)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def label_cutoff(spec: PipelineSpec, partition: date, now: date | None) -> date:
    """The newest day whose labels a run for `partition` may use when `now` is the newest day
    whose data has arrived (None: unknown, then the partition's own day counts as now)."""
    lag = timedelta(days=spec.monitoring.performance.label_delay_days)
    return min(partition, (now or partition) - lag)


def labels_due(spec: PipelineSpec, day: date, now: date) -> bool:
    """Whether the labels of `day` are delivered once `now` has arrived."""
    return day + timedelta(days=spec.monitoring.performance.label_delay_days) <= now


@dataclass(frozen=True)
class TrainingWindow:
    """The labelled days a training set uses, and why."""

    policy: str
    days: list[date]
    change_day: date | None
    weighted: bool
    reason: str


def choose_window(
    spec: PipelineSpec, cutoff: date, rows_by_day: dict[date, int], change_day: date | None
) -> TrainingWindow:
    """Apply the spec's window policy to the labelled days up to `cutoff` that hold rows."""
    window = spec.model.window
    size = spec.model.training_window_days
    sliding = [d for d in sorted(rows_by_day) if cutoff - timedelta(days=size - 1) <= d <= cutoff]
    if window.policy == "sliding":
        return TrainingWindow("sliding", sliding, None, False, "sliding window (the policy)")
    if window.policy == "weighted":
        return TrainingWindow("weighted", sliding, None, True, "recency-weighted (the policy)")
    if change_day is None or change_day <= sliding[0]:
        return TrainingWindow(
            "sliding", sliding, change_day, False, "no change flagged inside the window: sliding"
        )
    since = [d for d in sliding if d >= change_day]
    rows = sum(rows_by_day[d] for d in since)
    if rows < window.min_rows:
        return TrainingWindow(
            "weighted",
            sliding,
            change_day,
            True,
            f"change on {change_day}: {rows} delivered labelled rows since, fewer than "
            f"min_rows {window.min_rows}: recency-weighted",
        )
    return TrainingWindow(
        "since_change", since, change_day, False, f"since the change on {change_day}"
    )


def recency_weights(row_days: pd.Series, cutoff: date, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life) per row, age in days before `cutoff` (the newest day is 1)."""
    import numpy as np
    import pandas as pd

    age = (pd.Timestamp(cutoff) - pd.to_datetime(row_days)).dt.days.to_numpy(dtype=float)
    return np.power(0.5, age / half_life_days)


def holdout_mask(
    spec: PipelineSpec, row_days: pd.Series, timestamps: pd.Series, days: list[date]
) -> pd.Series:
    """The holdout rows: the newest holdout_days days, or the newest holdout_fraction of the
    window's rows by timestamp when that is the smaller share (a window of few days, right
    after a change): a window growing after a change keeps learning from most of its rows
    instead of holding out all but its first day."""
    holdout_days = spec.model.holdout_days
    fraction = spec.model.window.holdout_fraction
    if len(days) > holdout_days and holdout_days / len(days) <= fraction:
        return row_days >= days[-holdout_days]
    rank = timestamps.rank(method="first", pct=True)
    return rank > 1 - fraction
