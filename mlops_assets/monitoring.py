"""Monitoring stage: drift_report (Evidently, against the reference recorded with the model) and
model_performance (the champion on labels once they arrive), each with its own asset check."""

import math
import tempfile
from datetime import date
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from mlops_assets.data import daily_partitions, newest_arrived_day, partition_day
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
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec
from mlops_assets.training import REFERENCE_ARTIFACT_DIR, REFERENCE_FILE
from mlops_resources.drift_detection import DriftTest, EvidentlyResource
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLFLOW_RETRY_POLICY, MLflowResource
from mlops_resources.model_loading import load_registered_model
from mlops_resources.storage import ReportStoreResource

DRIFT_CHECK = "drift_share_below_threshold"
PERFORMANCE_CHECK = "performance_within_tolerance"
REGRESSION_CHECK = "champion_not_worse_than_replaced"


def drift_tests(spec: PipelineSpec) -> dict[str, DriftTest]:
    """Method and threshold per monitored column: by type, then per-column overrides."""
    drift = spec.monitoring.drift
    by_type = {"numeric": drift.numeric, "categorical": drift.categorical}
    tests = {f.name: by_type[f.type] for f in spec.features}
    tests[PREDICTION_COLUMN] = drift.numeric if prediction_is_numeric(spec) else drift.categorical
    tests.update(drift.columns)
    return {c: DriftTest(t.method, t.threshold) for c, t in tests.items()}


def prediction_is_numeric(spec: PipelineSpec) -> bool:
    return spec.task.value != "multiclass_classification"


def load_reference(mlflow: MLflowResource, spec: PipelineSpec, version: str) -> Frame:
    """The training sample and model output recorded with a registered version."""
    import pandas as pd

    run_id = mlflow.version_run_id(spec.model_name, version)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.download_run_artifact(
                run_id, f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}", folder
            )
        except Exception as exc:  # MlflowException or OSError, both mean "not recorded"
            raise Failure(
                f"model {spec.model_name} v{version} (run {run_id}) has no recorded drift "
                f"reference {REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}: retrain it ({exc})"
            ) from exc
        return pd.read_parquet(path)


def current_frame(spec: PipelineSpec, validated_data: Frame, predictions: Frame) -> Frame:
    """The day's features joined with the monitored model output, by entity and timestamp."""
    keys = [spec.entity_key, spec.timestamp]
    output = "score" if "score" in predictions else "prediction"
    monitored = predictions[[*keys, output]].rename(columns={output: PREDICTION_COLUMN})
    if not prediction_is_numeric(spec):
        monitored[PREDICTION_COLUMN] = monitored[PREDICTION_COLUMN].astype(str)
    return validated_data[[*keys, *spec.feature_names]].merge(monitored, on=keys, how="inner")


def report_link(location: str) -> MetadataValue:
    return MetadataValue.url(location) if "://" in location else MetadataValue.path(location)


def build_drift_report(spec: PipelineSpec) -> AssetsDefinition:
    drift = spec.monitoring.drift
    features = spec.feature_names

    @asset(
        name="drift_report",
        key_prefix=spec.name,
        ins=asset_ins(spec, "validated_data", "batch_predictions"),
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
        description="Evidently data drift of every feature and prediction drift for the day, "
        "against the training reference recorded with the model that scored it. The HTML "
        "report is linked; the metadata carries what the drift sensor reads.",
        check_specs=[
            AssetCheckSpec(
                DRIFT_CHECK,
                asset=asset_key(spec, "drift_report"),
                description=f"Share of drifted features stays below {drift.drift_share}.",
            )
        ],
        kinds={"evidently"},
        automation_condition=AutomationCondition.eager()
        & AutomationCondition.all_deps_blocking_checks_passed(),
    )
    def drift_report(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        evidently: EvidentlyResource,
        reports: ReportStoreResource,
        validated_data: Frame,
        batch_predictions: Frame,
    ):
        version = str(batch_predictions["model_version"].iloc[0])
        reference = load_reference(mlflow, spec, version)
        current = current_frame(spec, validated_data, batch_predictions)
        columns = [*features, PREDICTION_COLUMN]
        outcome = evidently.compare(
            reference,
            current,
            numeric=[c for c in columns if is_numeric(c)],
            categorical=[c for c in columns if not is_numeric(c)],
            tests=drift_tests(spec),
            sample_size=drift.sample_size,
        )
        share = outcome.share(features)
        detected = share >= drift.drift_share
        drifted = {c.column: round(c.score, 4) for c in outcome.drifted(features)}
        prediction = next(c for c in outcome.columns if c.column == PREDICTION_COLUMN)
        location = reports.save(
            f"drift_report/{spec.name}/{context.partition_key}.html",
            outcome.html,
            run_id=context.run_id,
        )
        online = drift_online(spec, context, mlflow, evidently, reports)
        detected = detected or bool(online.get("drift_detected"))
        summary = {
            "partition": context.partition_key,
            "model_version": version,
            "drift_share": share,
            "drift_detected": detected,
            "drifted_columns": drifted,
            "prediction_drift": prediction.drifted,
            "prediction_drift_score": prediction.score,
            "reference_rows": outcome.reference_rows,
            "current_rows": outcome.current_rows,
            "sampled": outcome.sampled,
            "report": location,
            "online": online,
        }
        context.log.info(
            f"drift share {share:.2f} (threshold {drift.drift_share}) against v{version}: "
            f"drifted {sorted(drifted) or 'none'}"
        )
        yield Output(
            summary,
            metadata={
                Meta.DRIFT_SHARE: share,
                Meta.DRIFT_DETECTED: detected,
                Meta.DRIFT_SHARE_THRESHOLD: drift.drift_share,
                Meta.DRIFTED_COLUMNS: MetadataValue.json(drifted),
                "column_tests": MetadataValue.md(column_table(outcome.columns)),
                Meta.PREDICTION_DRIFT: prediction.drifted,
                "prediction_drift_score": prediction.score,
                Meta.MODEL_VERSION: version,
                "reference_rows": outcome.reference_rows,
                "current_rows": outcome.current_rows,
                "sampled": outcome.sampled,
                "sample_size": drift.sample_size,
                Meta.DRIFT_REPORT_HTML: report_link(location),
                **online_drift_metadata(online),
            },
        )
        yield AssetCheckResult(
            check_name=DRIFT_CHECK,
            passed=not detected,
            severity=AssetCheckSeverity(drift.severity),
            description=f"{len(drifted)} of {len(features)} features drifted "
            f"(share {share:.2f}, threshold {drift.drift_share})" + online_drift_line(online),
            metadata={Meta.DRIFT_SHARE: share, Meta.DRIFTED_COLUMNS: MetadataValue.json(drifted)},
        )

    def is_numeric(column: str) -> bool:
        if column == PREDICTION_COLUMN:
            return prediction_is_numeric(spec)
        return next(f.type for f in spec.features if f.name == column) == "numeric"

    return drift_report


def column_table(columns: list[Any]) -> str:
    return markdown_table(
        ["column", "method", "threshold", "score", "drifted"],
        [(c.column, c.method, c.threshold, c.score, c.drifted) for c in columns],
    )


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
        name="model_performance",
        key_prefix=spec.name,
        ins=asset_ins(spec, "validated_data", "batch_predictions"),
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
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


def drift_online(
    spec: PipelineSpec,
    context: AssetExecutionContext,
    mlflow: MLflowResource,
    evidently: EvidentlyResource,
    reports: ReportStoreResource,
) -> dict[str, Any]:
    """Drift of the day's online traffic against the reference of the version that served it
    (mlops_assets/online.py), its HTML report beside the batch one, when the spec monitors
    online traffic; else, or when nothing was logged that day, {}."""
    if not spec.serving.monitor_online:
        return {}
    from mlops_assets.online import online_drift

    key = f"drift_report/{spec.name}/{context.partition_key}.online.html"
    online = online_drift(
        spec,
        partition_day(context.partition_key),
        evidently,
        drift_tests(spec),
        reference_of=lambda version: load_reference(mlflow, spec, version),
        save_report=lambda html: reports.save(key, html, run_id=context.run_id),
    )
    if online:
        context.log.info(
            f"online traffic: drift share {online['drift_share']:.2f} on "
            f"{online['current_rows']} rows served by v{online['model_version']}: drifted "
            f"{sorted(online['drifted_columns']) or 'none'}"
        )
    return online


def online_drift_metadata(online: dict[str, Any]) -> dict[str, Any]:
    if not online:
        return {}
    prefix = Meta.ONLINE_PREFIX
    return {
        f"{prefix}{Meta.DRIFT_SHARE}": online["drift_share"],
        f"{prefix}{Meta.DRIFT_DETECTED}": online["drift_detected"],
        f"{prefix}{Meta.DRIFTED_COLUMNS}": MetadataValue.json(online["drifted_columns"]),
        f"{prefix}{Meta.PREDICTION_DRIFT}": online["prediction_drift"],
        f"{prefix}{Meta.MODEL_VERSION}": online["model_version"],
        f"{prefix}current_rows": online["current_rows"],
        f"{prefix}{Meta.DRIFT_REPORT_HTML}": report_link(online["report"]),
    }


def online_drift_line(online: dict[str, Any]) -> str:
    if not online:
        return ""
    return (
        f"; online traffic: {len(online['drifted_columns'])} drifted "
        f"(share {online['drift_share']:.2f})"
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
