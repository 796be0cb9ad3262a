"""Evaluation by slice: the task's metrics on each configured slice (and day) of the holdout,
and the gate's slice-regression rules against the champion."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlops_assets.ml.evaluation import output_metrics
from mlops_assets.spec import METRICS_BY_TASK, PipelineSpec, SliceSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    Frame = pd.DataFrame


DAY_SLICE = "day"


def slice_labels(frame: Frame, item: SliceSpec) -> pd.Series:
    """Group label of each row: the category, or the `[low, high)` bin of a numeric column."""
    import pandas as pd

    values = frame[item.column]
    if item.bins is None:
        return values.astype(str)
    binned = pd.cut(values, bins=item.bins, right=False)
    return binned.astype(str).where(binned.notna(), "out of bins")


def slice_groups(spec: PipelineSpec, holdout: Frame) -> Iterator[tuple[str, str, pd.Index]]:
    """(slice column, value, row index) for every configured slice and, if on, every day."""
    labelled = [(item.column, slice_labels(holdout, item)) for item in spec.governance.slices]
    if spec.governance.slice_by_day:
        labelled.append((DAY_SLICE, holdout[spec.timestamp].dt.strftime("%Y-%m-%d")))
    for column, labels in labelled:
        for value, index in sorted(holdout.groupby(labels).groups.items()):
            yield column, str(value), index


def slice_metrics(
    spec: PipelineSpec, holdout: Frame, output: np.ndarray, classes: np.ndarray | None
) -> list[dict[str, Any]]:
    """The task's metrics on each slice of the holdout (NaN where a metric is undefined), from
    a model's output on the whole holdout (see model_output). `holdout` has a default
    RangeIndex."""
    rows = []
    for column, value, index in slice_groups(spec, holdout):
        rows.append(
            {
                "slice": column,
                "value": value,
                "rows": len(index),
                "metrics": output_metrics(
                    output[index], classes, holdout[spec.label].iloc[index], spec
                ),
            }
        )
    return rows


def slice_rules(
    spec: PipelineSpec, candidate: list[dict[str, Any]], champion: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Gate rules: no slice with enough rows may be worse than the champion by more than the
    tolerance. Slices where the metric is undefined (e.g. one class) are not judged."""
    tolerance = spec.governance.slice_tolerance
    if tolerance is None:
        return []
    higher = METRICS_BY_TASK[spec.task][tolerance.metric]
    baseline = {(s["slice"], s["value"]): s["metrics"][tolerance.metric] for s in champion}
    rules = []
    for item in candidate:
        value = item["metrics"][tolerance.metric]
        base = baseline.get((item["slice"], item["value"]), math.nan)
        if item["rows"] < spec.governance.min_slice_rows or math.isnan(value + base):
            continue
        drop = base - value if higher else value - base
        rules.append(
            {
                "metric": f"{tolerance.metric}[{item['slice']}={item['value']}]",
                "rule": f"drop vs champion <= {tolerance.max_drop}",
                "candidate": value,
                "champion": base,
                "passed": drop <= tolerance.max_drop,
            }
        )
    return rules


def slice_metric_name(spec: PipelineSpec) -> str:
    """The metric shown by slice: the gate's slice metric, else the task's first metric."""
    tolerance = spec.governance.slice_tolerance
    return tolerance.metric if tolerance else next(iter(METRICS_BY_TASK[spec.task]))
