"""Which assets the spark engine builds instead of the pandas engine's."""

from __future__ import annotations

from collections.abc import Callable

from dagster import AssetsDefinition

from mlops_assets.spec import PipelineSpec


def spark_builders() -> dict[str, Callable[[PipelineSpec], AssetsDefinition]]:
    """The spark engine's asset builders by asset name."""
    from mlops_assets.spark_engine.assets import (
        build_spark_features,
        build_spark_online_features,
        build_spark_raw_data,
        build_spark_validated_data,
    )
    from mlops_assets.spark_engine.assets_model import (
        build_spark_batch_predictions,
        build_spark_drift_report,
        build_spark_training_set,
    )

    return {
        "raw_data": build_spark_raw_data,
        "validated_data": build_spark_validated_data,
        "features": build_spark_features,
        "online_features": build_spark_online_features,
        "training_set": build_spark_training_set,
        "batch_predictions": build_spark_batch_predictions,
        "drift_report": build_spark_drift_report,
    }


def engine_assets(spec: PipelineSpec, assets: list[AssetsDefinition]) -> list[AssetsDefinition]:
    """`assets` (the pandas engine's, in graph order) with the spec's engine applied: for
    `engine: spark`, the Spark builds of SPARK_ASSETS in their places."""
    if spec.engine != "spark":
        return assets
    builders = spark_builders()
    return [builders[name](spec) if (name := a.key.path[-1]) in builders else a for a in assets]
