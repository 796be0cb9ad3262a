"""drift_report: Evidently data and prediction drift of a day (and of the day's online traffic)
against the reference recorded with the model that scored it, with its check."""

import tempfile
from collections.abc import Iterator
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

from mlops_assets.data import partition_day, partitioned
from mlops_assets.frames import Frame
from mlops_assets.keys import (
    Meta,
    asset_ins,
    asset_key,
)
from mlops_assets.markdown import markdown_table
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec
from mlops_assets.training import REFERENCE_ARTIFACT_DIR, REFERENCE_FILE
from mlops_resources.drift_detection import DriftOutcome, DriftTest, EvidentlyResource
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.storage import ReportStoreResource

DRIFT_CHECK = "drift_share_below_threshold"


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


def drift_report_args(spec: PipelineSpec, description: str, kinds: set[str]) -> dict[str, Any]:
    """The @asset arguments of drift_report: its inputs, its check and its eager automation."""
    return {
        **partitioned(spec, "drift_report"),
        "ins": asset_ins(
            spec,
            "validated_data",
            "batch_predictions",
            columns={"validated_data": [spec.entity_key, spec.timestamp, *spec.feature_names]},
        ),
        "description": description,
        "check_specs": [
            AssetCheckSpec(
                DRIFT_CHECK,
                asset=asset_key(spec, "drift_report"),
                description=f"Share of drifted features stays below "
                f"{spec.monitoring.drift.drift_share}.",
            )
        ],
        "kinds": kinds,
        "automation_condition": AutomationCondition.eager()
        & AutomationCondition.all_deps_blocking_checks_passed(),
    }


def drift_outputs(
    context: AssetExecutionContext,
    spec: PipelineSpec,
    reports: ReportStoreResource,
    outcome: Any,
    version: str,
    *,
    sampled: bool,
    online: dict[str, Any],
    **extra: Any,
) -> Iterator[Output[dict[str, Any]] | AssetCheckResult]:
    """drift_report's value, metadata (what the drift sensor reads) and check, from an
    Evidently outcome; the HTML report is saved and linked. `extra` goes into both."""
    drift = spec.monitoring.drift
    features = spec.feature_names
    share = outcome.share(features)
    detected = share >= drift.drift_share or bool(online.get("drift_detected"))
    drifted = {c.column: round(c.score, 4) for c in outcome.drifted(features)}
    prediction = next(c for c in outcome.columns if c.column == PREDICTION_COLUMN)
    location = reports.save(
        f"drift_report/{spec.name}/{context.partition_key}.html",
        outcome.html,
        run_id=context.run.run_id,
    )
    context.log.info(
        f"drift share {share:.2f} (threshold {drift.drift_share}) against v{version}: "
        f"drifted {sorted(drifted) or 'none'}"
    )
    yield Output(
        {
            "partition": context.partition_key,
            "model_version": version,
            "drift_share": share,
            "drift_detected": detected,
            "drifted_columns": drifted,
            "prediction_drift": prediction.drifted,
            "prediction_drift_score": prediction.score,
            "reference_rows": outcome.reference_rows,
            "current_rows": outcome.current_rows,
            "sampled": sampled,
            "report": location,
            "online": online,
            **extra,
        },
        metadata={
            Meta.DRIFT_SHARE: share,
            Meta.DRIFT_DETECTED: detected,
            Meta.DRIFT_SHARE_THRESHOLD: drift.drift_share,
            Meta.DRIFTED_COLUMNS: MetadataValue.json(drifted),
            "column_tests": MetadataValue.md(column_table(outcome.columns)),
            Meta.PREDICTION_DRIFT: prediction.drifted,
            Meta.PREDICTION_DRIFT_SCORE: prediction.score,
            Meta.MODEL_VERSION: version,
            "reference_rows": outcome.reference_rows,
            "current_rows": outcome.current_rows,
            "sampled": sampled,
            "sample_size": drift.sample_size,
            Meta.DRIFT_REPORT_HTML: report_link(location),
            **online_drift_metadata(online),
            **extra,
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


def is_numeric_column(spec: PipelineSpec, column: str) -> bool:
    """Whether a monitored column (a feature or the model output) is tested as numeric."""
    if column == PREDICTION_COLUMN:
        return prediction_is_numeric(spec)
    return next(f.type for f in spec.features if f.name == column) == "numeric"


def compare_to_reference(
    evidently: EvidentlyResource, spec: PipelineSpec, reference: Frame, current: Frame
) -> DriftOutcome:
    """Evidently's test of every monitored column of `current` (the features and the model
    output) against a model's training `reference`, with the spec's methods and thresholds."""
    columns = [*spec.feature_names, PREDICTION_COLUMN]
    return evidently.compare(
        reference,
        current,
        numeric=[c for c in columns if is_numeric_column(spec, c)],
        categorical=[c for c in columns if not is_numeric_column(spec, c)],
        tests=drift_tests(spec),
        sample_size=spec.monitoring.drift.sample_size,
    )


def build_drift_report(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **drift_report_args(
            spec,
            "Evidently data drift of every feature and prediction drift for the day, against "
            "the training reference recorded with the model that scored it. The HTML report is "
            "linked; the metadata carries what the drift sensor reads.",
            {"evidently"},
        )
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
        outcome = compare_to_reference(evidently, spec, reference, current)
        online = drift_online(spec, context, mlflow, evidently, reports)
        yield from drift_outputs(
            context, spec, reports, outcome, version, sampled=outcome.sampled, online=online
        )

    return drift_report


def column_table(columns: list[Any]) -> str:
    return markdown_table(
        ["column", "method", "threshold", "score", "drifted"],
        [(c.column, c.method, c.threshold, c.score, c.drifted) for c in columns],
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
        compare=lambda reference, current: compare_to_reference(
            evidently, spec, reference, current
        ),
        reference_of=lambda version: load_reference(mlflow, spec, version),
        save_report=lambda html: reports.save(key, html, run_id=context.run.run_id),
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
