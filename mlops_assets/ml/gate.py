"""The promotion gate's pure decision: value and change thresholds, fail closed. No Dagster, no
MLflow; `model_promotion` (mlops_assets/promotion.py) records the verdict and moves the alias."""

import math
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.spec import GateSpec, metric_gain


@dataclass
class Blessing:
    """The gate's verdict, recorded on the model version and in the asset metadata."""

    blessed: bool
    baseline_version: str | None
    message: str
    rules: list[dict[str, Any]] = field(default_factory=list)


def decide(
    gate: GateSpec,
    higher_is_better: dict[str, bool],
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    champion_version: str | None,
    extra_rules: list[dict[str, Any]] | None = None,
) -> Blessing:
    """Apply value thresholds, then (with a champion) direction-aware change thresholds, then
    `extra_rules` (governance: fairness, slices), which never bless on their own.

    Fail closed: no thresholds at all means no blessing; a NaN metric fails its rule.
    """
    if not gate.value_thresholds and not gate.change_thresholds:
        return Blessing(
            False, champion_version, "no gate thresholds configured: not promoted (fail closed)"
        )
    rules: list[dict[str, Any]] = []
    for metric, bound in gate.value_thresholds.items():
        value = candidate.get(metric, math.nan)
        limit = bound.min if higher_is_better[metric] else bound.max
        ok = not math.isnan(value) and (
            value >= limit if higher_is_better[metric] else value <= limit
        )
        rules.append(
            {
                "metric": metric,
                "rule": f"{'>=' if higher_is_better[metric] else '<='} {limit}",
                "candidate": value,
                "champion": None,
                "passed": ok,
            }
        )
    if champion is not None:
        for metric, change in gate.change_thresholds.items():
            value, base = candidate.get(metric, math.nan), champion.get(metric, math.nan)
            gain = metric_gain(higher_is_better[metric], value, base)
            required = max(
                change.min_absolute_change if change.min_absolute_change is not None else -math.inf,
                change.min_relative_change * abs(base)
                if change.min_relative_change is not None
                else -math.inf,
            )
            ok = not math.isnan(gain) and gain >= required
            rules.append(
                {
                    "metric": metric,
                    "rule": f"change vs champion >= {required:.4g}",
                    "candidate": value,
                    "champion": base,
                    "passed": ok,
                }
            )
    scope = (
        "no champion yet: value thresholds only"
        if champion is None
        else f"compared with champion v{champion_version}"
    )
    if not rules:
        return Blessing(
            False, champion_version, f"{scope}; no rule applies: not promoted (fail closed)"
        )
    rules += extra_rules or []
    failed = [r for r in rules if not r["passed"]]
    if failed:
        detail = "; ".join(
            f"{r['metric']} {r['candidate']:.4g}"
            + (f" (champion {r['champion']:.4g})" if r["champion"] is not None else "")
            + f" fails {r['rule']}"
            for r in failed
        )
        return Blessing(False, champion_version, f"{scope}; not blessed: {detail}", rules)
    return Blessing(
        True, champion_version, f"{scope}; blessed: all {len(rules)} rules passed", rules
    )
