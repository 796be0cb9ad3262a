"""Promotion stage: the champion/challenger gate. Only a blessed candidate moves the `champion`
alias, and the move is compare-and-set."""

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from mlops_assets.data import daily_partitions
from mlops_assets.spec import METRICS_BY_TASK, GateSpec, PipelineSpec
from mlops_assets.training import evaluate, load_model_version, split
from mlops_resources.mlflow_tracking import MLflowResource, PromotionConflict

GATE_CHECK = "promotion_gate"
MAX_PROMOTION_ATTEMPTS = 3


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
) -> Blessing:
    """Apply value thresholds, then (with a champion) direction-aware change thresholds.

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
            sign = 1.0 if higher_is_better[metric] else -1.0
            gain = sign * (value - base)
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
    failed = [r for r in rules if not r["passed"]]
    scope = (
        "no champion yet: value thresholds only"
        if champion is None
        else f"compared with champion v{champion_version}"
    )
    if not rules:
        return Blessing(
            False, champion_version, f"{scope}; no rule applies: not promoted (fail closed)"
        )
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


def rules_table(rules: list[dict[str, Any]]) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = ["| metric | rule | candidate | champion | passed |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['metric']} | {r['rule']} | {fmt(r['candidate'])} | {fmt(r['champion'])} | "
        f"{'yes' if r['passed'] else 'no'} |"
        for r in rules
    ]
    return "\n".join(lines)


def build_model_promotion(spec: PipelineSpec) -> AssetsDefinition:
    directions = METRICS_BY_TASK[spec.task]

    @asset(
        name="model_promotion",
        partitions_def=daily_partitions(spec),
        group_name="training",
        description="Champion/challenger gate: evaluates candidate and champion on the same "
        "holdout; only a blessed candidate moves the `champion` alias (compare-and-set).",
        check_specs=[
            AssetCheckSpec(
                GATE_CHECK,
                asset="model_promotion",
                description="The candidate passed the promotion gate.",
            )
        ],
        kinds={"mlflow"},
    )
    def model_promotion(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        candidate_model: dict[str, Any],
        training_set: pd.DataFrame,
    ):
        name, version = candidate_model["name"], candidate_model["version"]
        X_hold, y_hold = split(training_set, spec, "holdout")
        before = mlflow.champion(name)
        moved = False
        for _attempt in range(MAX_PROMOTION_ATTEMPTS):
            champion_version = mlflow.champion(name)
            if champion_version == version:
                blessing = Blessing(True, version, f"v{version} is already the champion")
                break
            champion_metrics = (
                evaluate(load_model_version(name, champion_version), X_hold, y_hold, spec)
                if champion_version
                else None
            )
            blessing = decide(
                spec.gate,
                directions,
                candidate_model["metrics"],
                champion_metrics,
                champion_version,
            )
            mlflow.tag_version(
                name,
                version,
                {
                    "mlops.blessed": blessing.blessed,
                    "mlops.baseline_version": blessing.baseline_version or "none",
                    "mlops.gate_message": blessing.message[:4000],
                    "mlops.gate_partition": context.partition_key,
                },
            )
            if not blessing.blessed:
                break
            try:
                mlflow.move_champion(name, version, expected=champion_version)
            except PromotionConflict as exc:
                context.log.warning(f"{exc}; re-evaluating against the new champion")
                continue
            mlflow.tag_version(
                name,
                version,
                {
                    "mlops.promoted_at": datetime.now(UTC).isoformat(),
                    "mlops.promoted_by": f"dagster run {context.run_id}",
                    "mlops.replaced_version": champion_version or "none",
                },
            )
            moved = True
            break
        else:
            raise Failure(
                f"champion of {name} kept moving during {MAX_PROMOTION_ATTEMPTS} "
                "promotion attempts; not promoted"
            )
        after = mlflow.champion(name)
        context.log.info(f"gate for v{version}: {blessing.message}")
        verdict = {
            "version": version,
            "blessed": blessing.blessed,
            "baseline_version": blessing.baseline_version,
            "champion_before": before,
            "champion_after": after,
            "champion_moved": moved,
            "message": blessing.message,
            "rules": blessing.rules,
        }
        yield Output(
            verdict,
            metadata={
                "blessed": blessing.blessed,
                "candidate_version": version,
                "baseline_version": blessing.baseline_version or "none",
                "champion_before": verdict["champion_before"] or "none",
                "champion_after": verdict["champion_after"] or "none",
                "champion_moved": moved,
                "message": blessing.message,
                "metrics": MetadataValue.md(
                    rules_table(blessing.rules) if blessing.rules else blessing.message
                ),
                "mlflow_model_version": MetadataValue.url(mlflow.model_version_url(name, version)),
            },
        )
        yield AssetCheckResult(
            check_name=GATE_CHECK,
            passed=blessing.blessed,
            severity=AssetCheckSeverity.WARN,
            description=blessing.message,
            metadata={"candidate_version": version, "champion_moved": moved},
        )

    return model_promotion
