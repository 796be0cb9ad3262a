"""The spark engine's model-side data assets: training_set (Feast's Spark point-in-time join),
batch_predictions (the champion on the executors) and drift_report (on a Spark-drawn sample).

training_set hands candidate_model a pandas DataFrame, as the pandas engine does: the whole
chosen window is collected to the training step (training fits in one process; the window is
the same as the pandas engine's and bounded by the spec's training_window_days). The other
two never collect a partition: predictions are written by the executors, and drift_report
brings at most monitoring.drift.sample_size rows to the driver.
"""

from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from mlops_assets.data import content_hash, daily_partitions, newest_arrived_day, partition_day
from mlops_assets.features import change_day
from mlops_assets.frames import Frame
from mlops_assets.keys import asset_ins, asset_key
from mlops_assets.memory_bound import require_fits
from mlops_assets.ml.dataset import SPLIT_COLUMN, WEIGHT_COLUMN
from mlops_assets.ml.windows import choose_window, holdout_mask, label_cutoff, recency_weights
from mlops_assets.monitoring import DRIFT_CHECK, column_table, drift_tests, load_reference
from mlops_assets.monitoring import prediction_is_numeric as numeric_prediction
from mlops_assets.spark_engine import offline, sampling, scoring
from mlops_assets.spark_engine.assets import SparkFrame, spark_schema
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec
from mlops_resources.drift_detection import EvidentlyResource
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLFLOW_RETRY_POLICY, MLflowResource
from mlops_resources.spark import SPARK_IO_MANAGER, SparkResource
from mlops_resources.storage import ReportStoreResource


def build_spark_training_set(spec: PipelineSpec) -> AssetsDefinition:
    size = spec.model.training_window_days

    @asset(
        name="training_set",
        key_prefix=spec.name,
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
        deps=[
            AssetDep(
                asset_key(spec, "features"),
                partition_mapping=TimeWindowPartitionMapping(
                    start_offset=-(size - 1), allow_nonexistent_upstream_partitions=True
                ),
            )
        ],
        description="The pandas engine's training_set (same delivered labels, window policy "
        "and holdout), its point-in-time join run by Feast's Spark offline store; the window's "
        "joined rows are collected for training.",
        kinds={"feast", "spark"},
    )
    def training_set(
        context: AssetExecutionContext, feast: FeastResource, spark: SparkResource
    ) -> Output[Frame]:
        import pandas as pd

        session = spark.session()
        cutoff = label_cutoff(spec, partition_day(context.partition_key), newest_arrived_day(spec))
        candidates = [cutoff - timedelta(days=i) for i in range(size - 1, -1, -1)]
        rows_by_day = offline.rows_by_day(session, spec, feast, candidates)
        if not rows_by_day:
            raise Failure(
                f"training_set {context.partition_key}: no feature data with delivered labels "
                f"in {candidates[0]}..{cutoff}. Materialize `features` for earlier days first."
            )
        window = choose_window(spec, cutoff, rows_by_day, change_day(context, spec, candidates))
        table = offline.offline_table(spec, feast)
        require_fits(  # the window is collected for training: check it fits first
            f"the training window's offline table ({window.days[0]}..{window.days[-1]})",
            context.partition_key,
            [
                p
                for d in window.days
                for p in sorted((table / f"{offline.DAY_COLUMN}={d}").glob("*.parquet"))
            ],
        )
        labels = offline.label_rows(session, spec, feast, window.days)
        context.log.info(f"{window.reason}: Feast's Spark point-in-time join of {window.days}")
        df = offline.historical_features(feast, labels, spec).toPandas()
        df[spec.timestamp] = pd.to_datetime(df[spec.timestamp], utc=True)
        df = df.sort_values([spec.timestamp, spec.entity_key]).reset_index(drop=True)
        row_days = df[spec.timestamp].dt.date
        holdout = holdout_mask(spec, row_days, df[spec.timestamp], window.days)
        if holdout.all() or not holdout.any():
            raise Failure(
                f"training_set {context.partition_key}: need rows both to train on and to hold "
                f"out; {window.reason} gave {len(df)} rows of {[str(d) for d in window.days]}"
            )
        df[SPLIT_COLUMN] = holdout.map({True: "holdout", False: "train"})
        df[WEIGHT_COLUMN] = (
            recency_weights(row_days, cutoff, spec.model.window.half_life_days)
            if window.weighted
            else 1.0
        )
        version = content_hash(df)
        split = df[SPLIT_COLUMN].value_counts().to_dict()
        return Output(
            df,
            data_version=DataVersion(version),
            metadata={
                "dagster/row_count": len(df),
                "content_hash": version,
                "train_rows": int(split.get("train", 0)),
                "holdout_rows": int(split.get("holdout", 0)),
                "label_cutoff": cutoff.isoformat(),
                "window_policy": window.policy,
                "window_reason": window.reason,
                "change_day": window.change_day.isoformat() if window.change_day else "none",
                "days_used": MetadataValue.json([d.isoformat() for d in window.days]),
                "holdout_days": MetadataValue.json(sorted({str(d) for d in row_days[holdout]})),
                "engine": "spark",
            },
        )

    return training_set


def build_spark_batch_predictions(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        name="batch_predictions",
        key_prefix=spec.name,
        ins=asset_ins(spec, "validated_data"),
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
        deps=[asset_key(spec, "model_promotion"), asset_key(spec, "features")],
        output_required=False,
        description="The partition's rows scored on the executors by the current champion "
        "(shipped once, loaded by the suite's safe loader), features joined by Feast's Spark "
        "offline store. Not materialized while no champion exists.",
        kinds={"mlflow", "feast", "spark"},
        retry_policy=MLFLOW_RETRY_POLICY,
        io_manager_key=SPARK_IO_MANAGER,
        dagster_type=SparkFrame,
    )
    def batch_predictions(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        feast: FeastResource,
        validated_data: Any,
    ):
        from pyspark.sql import functions as F

        champion = mlflow.champion(spec.model_name)
        if champion is None:
            context.log.warning(
                f"no champion for {spec.model_name} yet: nothing scored for {context.partition_key}"
            )
            return
        entities = validated_data.select(spec.entity_key, spec.timestamp)
        rows = offline.historical_features(feast, entities, spec)
        uri = f"models:/{spec.model_name}/{champion}"
        predictions = scoring.score_rows(rows, spec, uri).withColumn(
            "model_version", F.lit(str(champion))
        )
        context.log.info(f"scoring {context.partition_key} on Spark with champion v{champion}")
        yield Output(
            predictions,
            metadata={
                "champion_version": champion,
                "dagster/column_schema": spark_schema(predictions),
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, champion)
                ),
                "engine": "spark",
            },
        )

    return batch_predictions


def build_spark_drift_report(spec: PipelineSpec) -> AssetsDefinition:
    drift = spec.monitoring.drift
    features = spec.feature_names
    numeric = {f.name: f.type == "numeric" for f in spec.features}
    numeric[PREDICTION_COLUMN] = numeric_prediction(spec)

    @asset(
        name="drift_report",
        key_prefix=spec.name,
        ins=asset_ins(spec, "validated_data", "batch_predictions"),
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
        description="Evidently data and prediction drift of the day against the reference "
        "recorded with the model that scored it, on at most monitoring.drift.sample_size rows "
        "joined and sampled by Spark.",
        check_specs=[
            AssetCheckSpec(
                DRIFT_CHECK,
                asset=asset_key(spec, "drift_report"),
                description=f"Share of drifted features stays below {drift.drift_share}.",
            )
        ],
        kinds={"evidently", "spark"},
        automation_condition=AutomationCondition.eager()
        & AutomationCondition.all_deps_blocking_checks_passed(),
    )
    def drift_report(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        evidently: EvidentlyResource,
        reports: ReportStoreResource,
        validated_data: Any,
        batch_predictions: Any,
    ):
        version = str(batch_predictions.select("model_version").first()[0])
        reference = load_reference(mlflow, spec, version)
        current = sampling.current_rows(validated_data, batch_predictions, spec)
        sample, total = sampling.sample_rows(current, drift.sample_size, seed=evidently.seed)
        columns = [*features, PREDICTION_COLUMN]
        outcome = evidently.compare(
            reference,
            sample,
            numeric=[c for c in columns if numeric[c]],
            categorical=[c for c in columns if not numeric[c]],
            tests=drift_tests(spec),
            sample_size=drift.sample_size,
        )
        sampled = outcome.sampled or total > len(sample)
        share = outcome.share(features)
        detected = share >= drift.drift_share
        drifted = {c.column: round(c.score, 4) for c in outcome.drifted(features)}
        prediction = next(c for c in outcome.columns if c.column == PREDICTION_COLUMN)
        location = reports.save(
            f"drift_report/{spec.name}/{context.partition_key}.html", outcome.html
        )
        context.log.info(
            f"drift share {share:.2f} on {len(sample)} of {total} rows against v{version}"
        )
        link = MetadataValue.url(location) if "://" in location else MetadataValue.path(location)
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
                "day_rows": total,
                "sampled": sampled,
                "report": location,
            },
            metadata={
                "drift_share": share,
                "drift_detected": detected,
                "drift_share_threshold": drift.drift_share,
                "drifted_columns": MetadataValue.json(drifted),
                "column_tests": MetadataValue.md(column_table(outcome.columns)),
                "prediction_drift": prediction.drifted,
                "prediction_drift_score": prediction.score,
                "model_version": version,
                "reference_rows": outcome.reference_rows,
                "current_rows": outcome.current_rows,
                "day_rows": total,
                "sampled": sampled,
                "sample_size": drift.sample_size,
                "drift_report_html": link,
                "engine": "spark",
            },
        )
        yield AssetCheckResult(
            check_name=DRIFT_CHECK,
            passed=not detected,
            severity=AssetCheckSeverity(drift.severity),
            description=f"{len(drifted)} of {len(features)} features drifted "
            f"(share {share:.2f}, threshold {drift.drift_share})",
            metadata={"drift_share": share, "drifted_columns": MetadataValue.json(drifted)},
        )

    return drift_report
