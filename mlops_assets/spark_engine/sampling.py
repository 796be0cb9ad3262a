"""drift_report with Spark: the rows drift is computed on, joined and sampled by Spark.

The driver receives at most `sample_size` rows (the spec's monitoring.drift.sample_size),
never a whole partition: Spark joins the day's features with the scored output on the
executors, counts the rows, and draws a seeded Bernoulli sample a little larger than wanted
before cutting it to size. When the day holds no more rows than the sample size, every row is
used, and the drift verdict is exactly the pandas engine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

OVERSAMPLE = 1.1  # Bernoulli sampling draws about fraction * rows: ask for a little more


def current_rows(validated: DataFrame, predictions: DataFrame, spec: PipelineSpec) -> DataFrame:
    """The day's features joined with the monitored model output (the positive-class score
    for binary tasks, else the prediction), as mlops_assets.drift.current_frame does."""
    keys = [spec.entity_key, spec.timestamp]
    output = "score" if "score" in predictions.columns else "prediction"
    monitored = predictions.select(*keys, predictions[output].alias(PREDICTION_COLUMN))
    if spec.task.value == "multiclass_classification":
        monitored = monitored.withColumn(
            PREDICTION_COLUMN, monitored[PREDICTION_COLUMN].cast("string")
        )
    return validated.select(*keys, *spec.feature_names).join(monitored, on=keys, how="inner")


def sample_rows(df: DataFrame, size: int, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """At most `size` rows of `df` on the driver (all of them when there are no more), and
    how many rows `df` has."""
    total = df.count()
    if total <= size:
        return df.toPandas(), total
    fraction = min(1.0, OVERSAMPLE * size / total)
    return df.sample(fraction=fraction, seed=seed).limit(size).toPandas(), total
