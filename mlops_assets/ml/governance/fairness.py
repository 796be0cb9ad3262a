"""Group fairness of the favorable outcome over a sensitive attribute, and its gate rules."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_assets.ml.evaluation import positive_class
from mlops_assets.ml.governance.slices import slice_labels
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    Frame = pd.DataFrame


def favorable_class(spec: PipelineSpec, classes: np.ndarray) -> str:

    fairness = spec.governance.fairness
    chosen = fairness.favorable_class if fairness else None
    return str(chosen if chosen is not None else positive_class(spec, classes))


def fairness_report(
    spec: PipelineSpec, holdout: Frame, predicted: pd.Series, favorable: str
) -> dict[str, Any] | None:
    """Selection rate and true-positive rate of the favorable outcome per group of the sensitive
    attribute; demographic parity difference, equal opportunity difference and disparate impact
    ratio over the groups with at least `min_group_rows` rows."""
    fairness = spec.governance.fairness
    if fairness is None:
        return None
    groups = slice_labels(holdout, fairness.sensitive_attribute).to_numpy()
    selected = predicted.astype(str).to_numpy() == favorable
    qualified = holdout[spec.label].astype(str).to_numpy() == favorable
    table = []
    for group in sorted(set(groups)):
        rows = groups == group
        table.append(
            {
                "group": group,
                "rows": int(rows.sum()),
                "selection_rate": float(selected[rows].mean()),
                "true_positive_rate": float(selected[rows & qualified].mean())
                if (rows & qualified).any()
                else math.nan,
                "judged": bool(rows.sum() >= fairness.min_group_rows),
            }
        )
    judged = [g for g in table if g["judged"]]
    rates = [g["selection_rate"] for g in judged]
    tprs = [g["true_positive_rate"] for g in judged if not math.isnan(g["true_positive_rate"])]
    nan = math.nan
    return {
        "attribute": fairness.sensitive_attribute.column,
        "favorable_class": favorable,
        "groups": table,
        "demographic_parity_difference": max(rates) - min(rates) if len(rates) > 1 else nan,
        "equal_opportunity_difference": max(tprs) - min(tprs) if len(tprs) > 1 else nan,
        # All groups at a zero selection rate are treated alike: ratio 1.
        "disparate_impact_ratio": (min(rates) / max(rates) if max(rates) > 0 else 1.0)
        if len(rates) > 1
        else nan,
    }


FAIRNESS_THRESHOLDS = {
    "demographic_parity_difference": ("max_demographic_parity_difference", "<="),
    "equal_opportunity_difference": ("max_equal_opportunity_difference", "<="),
    "disparate_impact_ratio": ("min_disparate_impact_ratio", ">="),
}


def fairness_rules(spec: PipelineSpec, report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Gate rules from the configured fairness thresholds; NaN (fewer than 2 judged groups)
    fails, so an unmeasurable model is not promoted."""
    fairness = spec.governance.fairness
    if fairness is None or report is None:
        return []
    rules = []
    for metric, (key, op_) in FAIRNESS_THRESHOLDS.items():
        limit = getattr(fairness, key)
        if limit is None:
            continue
        value = report[metric]
        ok = not math.isnan(value) and (value <= limit if op_ == "<=" else value >= limit)
        rules.append(
            {
                "metric": f"{metric}[{report['attribute']}]",
                "rule": f"{op_} {limit}",
                "candidate": value,
                "champion": None,
                "passed": ok,
            }
        )
    return rules
