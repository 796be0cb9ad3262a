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
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from mlops_assets.data import newest_arrived_day, partition_day, partitioned
from mlops_assets.drift import (
    compare_to_reference,
    drift_outputs,
    drift_report_args,
    load_reference,
)
from mlops_assets.features import change_day, training_output, window_dep
from mlops_assets.frames import Frame
from mlops_assets.inference import batch_predictions_args, current_champion
from mlops_assets.memory_bound import require_fits
from mlops_assets.ml.windows import choose_window, label_cutoff
from mlops_assets.spark_engine import offline, sampling, scoring
from mlops_assets.spark_engine.assets import SparkFrame, spark_schema
from mlops_assets.spec import PipelineSpec
from mlops_resources.drift_detection import EvidentlyResource
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.spark import SPARK_IO_MANAGER, SparkResource
from mlops_resources.storage import ReportStoreResource


def build_spark_training_set(spec: PipelineSpec) -> AssetsDefinition:
    size = spec.model.training_window_days

    @asset(
        **partitioned(spec, "training_set"),
        deps=[window_dep(spec)],
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
        df = spark.to_pandas(offline.historical_features(feast, labels, spec))
        # nanoseconds, as the pandas engine's rows (pyarrow keeps Spark's microseconds)
        df[spec.timestamp] = pd.to_datetime(df[spec.timestamp], utc=True).astype(
            "datetime64[ns, UTC]"
        )
        return training_output(context.partition_key, spec, df, window, cutoff, engine="spark")

    return training_set


def build_spark_batch_predictions(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **batch_predictions_args(
            spec,
            "The partition's rows scored on the executors by the current champion (shipped "
            "once, loaded by the suite's safe loader), features joined by Feast's Spark offline "
            "store.",
            {"mlflow", "feast", "spark"},
        ),
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

        champion = current_champion(context, mlflow, spec)
        if champion is None:
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

    @asset(
        **drift_report_args(
            spec,
            "Evidently data and prediction drift of the day against the reference recorded "
            "with the model that scored it, on at most monitoring.drift.sample_size rows joined "
            "and sampled by Spark.",
            {"evidently", "spark"},
        )
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
        outcome = compare_to_reference(evidently, spec, reference, sample)
        context.log.info(f"Spark drew {len(sample)} of the day's {total} rows")
        yield from drift_outputs(
            context,
            spec,
            reports,
            outcome,
            version,
            sampled=outcome.sampled or total > len(sample),
            online={},
            day_rows=total,
            engine="spark",
        )

    return drift_report
