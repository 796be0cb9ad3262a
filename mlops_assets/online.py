"""Online traffic in the loop: `online_predictions` is a day of the server's request log
(mlops_assets/serving; docs/serving.md); drift_report compares it with the reference of the
version that served it, and model_performance scores it on the day's delivered labels, both
beside batch_predictions, when the spec sets `serving.monitor_online`.

The request log's Parquet files are the asset's data (as Feast's stores are the `features`
asset's): the asset records what a day of traffic was (rows, versions, latency, missing
features, shadow agreement) and model_performance reads the same files. A logged row is
labelled with the label of its entity's row of that day in validated_data (the entity's
latest event of the day when it has several).

No `from __future__ import annotations`: Dagster reads the asset's context annotation at run time.
"""

from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from mlops_assets.data import partition_day, partitioned
from mlops_assets.frames import Frame
from mlops_assets.serving.request_log import request_log_folder
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec, Task

if TYPE_CHECKING:
    from mlops_resources.drift_detection import DriftOutcome


def read_online_predictions(spec: PipelineSpec, day: date) -> "Frame | None":
    """Every row the server logged on `day` (UTC), or None when it logged none."""
    import pandas as pd

    files = sorted((request_log_folder(spec.name) / day.isoformat()).glob("*.parquet"))
    if not files:
        return None
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def labelled_online_rows(spec: PipelineSpec, online: "Frame", validated_data: "Frame") -> "Frame":
    """The logged rows whose entity has a row (and so a delivered label) in the day's data."""
    labels = (
        validated_data.sort_values(spec.timestamp)
        .drop_duplicates(spec.entity_key, keep="last")[[spec.entity_key, spec.label]]
        .astype({spec.entity_key: str})
    )
    return online.merge(labels, on=spec.entity_key, how="inner")


def online_performance(
    spec: PipelineSpec, day: date, validated_data: "Frame", holdout_of: Any
) -> dict[str, Any]:
    """The answers served online on `day`, scored on their labels: rows, the version that
    answered most, its live metrics and those worse than its holdout (`holdout_of(version)`)
    beyond monitoring.performance.max_degradation. {} without labelled online rows."""
    import math

    from mlops_assets.ml.evaluation import served_metrics, worsening

    online = read_online_predictions(spec, day)
    if online is None:
        return {}
    labelled = labelled_online_rows(spec, online, validated_data)
    if labelled.empty:
        return {}
    version = str(labelled["model_version"].mode().iloc[0])
    live = served_metrics(labelled, spec)
    holdout = holdout_of(version)
    limits = spec.monitoring.performance.max_degradation
    degraded = sorted(
        m
        for m, limit in limits.items()
        if worsening(spec, m, holdout.get(m, math.nan), live[m]) > limit
    )
    return {
        "labelled_rows": len(labelled),
        "logged_rows": len(online),
        "versions": {str(v): int(n) for v, n in labelled["model_version"].value_counts().items()},
        "model_version": version,
        "live": live,
        "degraded_metrics": degraded,
    }


def online_monitored_frame(spec: PipelineSpec, online: "Frame") -> "Frame":
    """The logged rows as drift_report compares them with a reference: the features as the
    model saw them and the monitored output (training.monitored_output: the positive-class
    score for binary tasks, the label for multiclass, the value for regression)."""
    if spec.task == Task.binary_classification:
        output = online["score"].astype(float)
    elif spec.task == Task.multiclass_classification:
        output = online["prediction"].astype(str)
    else:
        output = online["prediction"].astype(float)
    return online[spec.feature_names].assign(**{PREDICTION_COLUMN: output.to_numpy()})


def online_drift(
    spec: PipelineSpec,
    day: date,
    compare: Callable[["Frame", "Frame"], "DriftOutcome"],
    reference_of: Callable[[str], "Frame"],
    save_report: Callable[[str], str],
) -> dict[str, Any]:
    """Drift of what was served online on `day`: the logged rows answered by the version that
    answered most of them, against that version's training reference (`reference_of(version)`),
    with drift_report's test (`compare(reference, current)`); the HTML report saved with
    `save_report(html)`. {} when nothing was logged that day."""
    online = read_online_predictions(spec, day)
    if online is None or online.empty:
        return {}
    version = str(online["model_version"].mode().iloc[0])
    served = online[online["model_version"].astype(str) == version]
    outcome = compare(reference_of(version), online_monitored_frame(spec, served))
    features = spec.feature_names
    share = outcome.share(features)
    prediction = next(c for c in outcome.columns if c.column == PREDICTION_COLUMN)
    return {
        "model_version": version,
        "logged_rows": len(online),
        "current_rows": outcome.current_rows,
        "drift_share": share,
        "drift_detected": share >= spec.monitoring.drift.drift_share,
        "drifted_columns": {c.column: round(c.score, 4) for c in outcome.drifted(features)},
        "prediction_drift": prediction.drifted,
        "prediction_drift_score": prediction.score,
        "report": save_report(outcome.html),
    }


def traffic_summary(spec: PipelineSpec, online: "Frame") -> dict[str, Any]:
    """What a day of online traffic was, for the asset's metadata."""
    summary: dict[str, Any] = {
        "dagster/row_count": len(online),
        "requests": int(online["request_id"].nunique()),
        "entities": int(online[spec.entity_key].nunique()),
        "answered_by_version": MetadataValue.json(
            {str(k): int(v) for k, v in online["model_version"].value_counts().items()}
        ),
        "canary_rows": int((online["answered_by"] == "challenger").sum()),
        "rows_with_missing_features": int(online["missing_features"].map(len).gt(0).sum()),
        "latency_p50_ms": float(online["latency_ms"].quantile(0.5)),
        "latency_p99_ms": float(online["latency_ms"].quantile(0.99)),
    }
    both = online.dropna(subset=["challenger_prediction"])
    if len(both):
        agreement = (both["champion_prediction"] == both["challenger_prediction"]).mean()
        summary["shadow_rows"] = len(both)
        summary["shadow_agreement"] = float(agreement)
    return summary


def build_online_predictions(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "online_predictions"),
        description="A day of online traffic: every row `python -m mlops_assets serve` answered "
        "(entity, features used, version, prediction, the challenger's shadow prediction, "
        "latency), from its Parquet request log. model_performance scores it on the day's "
        "labels beside batch_predictions.",
        kinds={"fastapi", "parquet"},
    )
    def online_predictions(context: AssetExecutionContext) -> MaterializeResult:
        day = partition_day(context.partition_key)
        folder = request_log_folder(spec.name) / day.isoformat()
        online = read_online_predictions(spec, day)
        if online is None:
            context.log.info(f"no online traffic logged for {day} in {folder}")
            return MaterializeResult(
                metadata={"dagster/row_count": 0, "request_log": MetadataValue.path(str(folder))}
            )
        summary = traffic_summary(spec, online)
        context.log.info(f"{len(online)} online rows logged for {day}")
        return MaterializeResult(
            metadata={**summary, "request_log": MetadataValue.path(str(folder))}
        )

    return online_predictions
