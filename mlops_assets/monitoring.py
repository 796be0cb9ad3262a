"""Monitoring stage: model_performance, the predictions served for a day judged on its labels once
they arrive, with its checks (drift_report is in mlops_assets/drift.py)."""

import math
from datetime import date
from typing import Any

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

from mlops_assets.data import newest_arrived_day, partition_day, partitioned
from mlops_assets.frames import Frame
from mlops_assets.keys import (
    REPLACED_TAG,
    Meta,
    asset_ins,
    asset_key,
)
from mlops_assets.labels import LabelSourceError, with_labels
from mlops_assets.markdown import markdown_table
from mlops_assets.ml.evaluation import evaluate, served_metrics, worsening
from mlops_assets.ml.windows import labels_due
from mlops_assets.spec import PipelineSpec
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLFLOW_RETRY_POLICY, MLflowResource
from mlops_resources.model_loading import load_registered_model

PERFORMANCE_CHECK = "performance_within_tolerance"
REGRESSION_CHECK = "champion_not_worse_than_replaced"


def holdout_metrics(mlflow: MLflowResource, name: str, version: str) -> dict[str, float]:
    """A version's training-time holdout metrics, as logged with its MLflow run."""
    return {
        k.removeprefix(Meta.HOLDOUT_PREFIX): v
        for k, v in mlflow.run_metrics(mlflow.version_run_id(name, version)).items()
        if k.startswith(Meta.HOLDOUT_PREFIX)
    }


def build_model_performance(spec: PipelineSpec) -> AssetsDefinition:
    performance = spec.monitoring.performance

    @asset(
        **partitioned(spec, "model_performance"),
        ins=asset_ins(spec, "validated_data", "batch_predictions"),
        deps=[
            asset_key(spec, "model_promotion"),
            *([asset_key(spec, "online_predictions")] if spec.serving.monitor_online else []),
        ],
        description=f"The predictions actually served for a day (batch_predictions, and with "
        "serving.monitor_online the online traffic, online_predictions), scored on "
        f"its labels once they are delivered ({performance.label_delay_days} day(s) later), "
        "versus the served version's training-time holdout; the current champion and "
        "challenger on the same rows beside them; and, when the served version is still the "
        "champion, versus the version it replaced. Concept drift shows here, not in data drift.",
        check_specs=[
            AssetCheckSpec(
                PERFORMANCE_CHECK,
                asset=asset_key(spec, "model_performance"),
                description="No metric of the served predictions worse than the served "
                f"version's training-time holdout beyond max_degradation "
                f"{performance.max_degradation}.",
            ),
            AssetCheckSpec(
                REGRESSION_CHECK,
                asset=asset_key(spec, "model_performance"),
                description="The champion, on days it served, is not worse than the version it "
                f"replaced beyond rollback_margin {performance.rollback_margin} (else: roll "
                "back).",
            ),
        ],
        kinds={"mlflow", "scikit-learn"},
        retry_policy=MLFLOW_RETRY_POLICY,
    )
    def model_performance(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        validated_data: Frame,
        batch_predictions: Frame,
    ):
        name, day = spec.model_name, partition_day(context.partition_key)
        now = newest_arrived_day(spec)
        if now is not None and not labels_due(spec, day, now):
            raise Failure(
                f"labels of {day} are delivered {performance.label_delay_days} day(s) later; "
                f"the newest arrived day is {now}: not evaluated before delivery"
            )
        try:
            validated_data = with_labels(spec, day, validated_data)
        except LabelSourceError as exc:
            raise Failure(f"model_performance {context.partition_key}: {exc}") from None
        keys = [spec.entity_key, spec.timestamp]
        served = batch_predictions.merge(
            validated_data[[*keys, *spec.feature_names, spec.label]], on=keys, how="inner"
        )
        version = str(served["model_version"].iloc[0])
        live = served_metrics(served, spec)
        holdout = holdout_metrics(mlflow, name, version)
        degradation = {
            m: worsening(spec, m, holdout.get(m, math.nan), live[m])
            for m in performance.max_degradation
        }
        degraded = sorted(m for m, d in degradation.items() if d > performance.max_degradation[m])
        online = served_online(spec, day, validated_data, mlflow)
        degraded += [f"online:{m}" for m in online.get("degraded_metrics", [])]
        X, y = served[spec.feature_names], served[spec.label]
        champion = mlflow.champion(name)
        challenger = mlflow.alias_version(name, CHALLENGER_ALIAS)
        beside = {
            f"{role} v{v}": evaluate(load_registered_model(name, v), X, y, spec)
            for role, v in (("champion", champion), ("challenger", challenger))
            if v is not None and v != version
        }
        # Only days the champion itself served can recommend rolling it back.
        replaced = mlflow.version_tags(name, version).get(REPLACED_TAG, "none")
        previous = (
            evaluate(load_registered_model(name, replaced), X, y, spec)
            if version == champion and replaced != "none" and performance.rollback_margin
            else {}
        )
        regression = (
            {m: worsening(spec, m, previous[m], live[m]) for m in performance.rollback_margin}
            if previous
            else {}
        )
        regressed = sorted(m for m, d in regression.items() if d > performance.rollback_margin[m])
        result = {
            "partition": context.partition_key,
            "model_version": version,
            "champion_version": champion,
            "labelled_rows": len(served),
            "live": live,
            "holdout": holdout,
            "beside": beside,
            "degraded": bool(degraded),
            "degraded_metrics": degraded,
            "replaced_version": replaced,
            "replaced_live": previous,
            "rollback_recommended": bool(regressed),
            "online": online,
        }
        context.log.info(
            f"served v{version} on {len(served)} labelled rows: {live}; degraded "
            f"{degraded or 'no'}; worse than v{replaced}: {regressed or 'no'}"
        )
        yield Output(
            result,
            metadata={
                Meta.MODEL_VERSION: version,
                Meta.CHAMPION_VERSION: champion or "none",
                "labelled_rows": len(served),
                "label_delay_days": performance.label_delay_days,
                Meta.DEGRADED: bool(degraded),
                Meta.DEGRADED_METRICS: MetadataValue.json(degraded),
                Meta.ROLLBACK_RECOMMENDED: bool(regressed),
                Meta.REPLACED_VERSION: replaced,
                "metrics": MetadataValue.md(metric_table(live, holdout, previous)),
                "beside_served": MetadataValue.json(beside),
                **{f"{Meta.LIVE_PREFIX}{k}": v for k, v in live.items()},
                **{f"{Meta.HOLDOUT_PREFIX}{k}": v for k, v in holdout.items() if math.isfinite(v)},
                **online_metadata(online),
            },
        )
        yield AssetCheckResult(
            check_name=PERFORMANCE_CHECK,
            passed=not degraded,
            severity=AssetCheckSeverity(performance.severity),
            description=(
                f"served v{version} worse than its holdout beyond tolerance: {degraded}"
                if degraded
                else f"served v{version} within tolerance of its training-time holdout"
            ),
            metadata={"degradation": MetadataValue.json(degradation)},
        )
        yield AssetCheckResult(
            check_name=REGRESSION_CHECK,
            passed=not regressed,
            severity=AssetCheckSeverity(performance.severity),
            description=(
                f"v{version} is worse than v{replaced} on {regressed}: roll back"
                if regressed
                else f"v{version} not worse than the replaced version ({replaced}) on days it "
                "served"
                if version == champion
                else f"served by v{version}, no longer the champion (v{champion}): no rollback"
            ),
            metadata={"regression": MetadataValue.json(regression)},
        )

    return model_performance


def served_online(
    spec: PipelineSpec, day: date, validated_data: Frame, mlflow: MLflowResource
) -> dict[str, Any]:
    """The day's online answers scored on its labels (mlops_assets/online.py), when the spec
    monitors online traffic; else {}."""
    if not spec.serving.monitor_online:
        return {}
    from mlops_assets.online import online_performance

    return online_performance(
        spec, day, validated_data, lambda v: holdout_metrics(mlflow, spec.model_name, v)
    )


def online_metadata(online: dict[str, Any]) -> dict[str, Any]:
    if not online:
        return {}
    return {
        "online_labelled_rows": online["labelled_rows"],
        "online_model_version": online["model_version"],
        "online_versions": MetadataValue.json(online["versions"]),
        **{f"online_live_{k}": v for k, v in online["live"].items() if math.isfinite(v)},
    }


def metric_table(
    live: dict[str, float], holdout: dict[str, float], previous: dict[str, float]
) -> str:
    return markdown_table(
        ["metric", "live", "holdout", "replaced version"],
        [(m, v, holdout.get(m), previous.get(m)) for m, v in live.items()],
    )
