"""features and training_set with Spark: Feast's Spark offline store.

The day's feature rows (with the label) are written by Spark as one `day=YYYY-MM-DD`
partition of a Parquet table under Feast's offline folder, replacing that day only (dynamic
partition overwrite), so a re-run replaces its day as the pandas engine's per-day file does.
The feature view reads the table through a SparkSource, and the point-in-time joins of
training_set and batch_predictions are Feast's own (`get_historical_features` of the Spark
offline store, whose SQL runs on the cluster and whose result stays a Spark DataFrame).

The Spark offline store reads only SparkSources and the file offline store only FileSources,
so a spark pipeline's Feast calls go through a copy of the project's FeastResource whose
offline store is `spark` (same project, registry and online store): `spark_feast`.

Online writes run on the executors, as Feast's Spark compute engine writes (mapInPandas with the
feature view and repo config shipped to each task), but through the configured provider's
`ingest_df`, the code behind `write_to_online_store`: the embedded sqlite store keeps its
entity-row write, Redis gets Feast's own. The driver collects one count per batch, never the rows.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.spec import PipelineSpec
from mlops_resources.feast_store import FeastResource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DAY_COLUMN = "day"  # the table's partition column (YYYY-MM-DD)


def spark_feast(feast: FeastResource) -> FeastResource:
    """`feast` with Feast's Spark offline store (it uses the active SparkSession)."""
    fields = {name: getattr(feast, name) for name in type(feast).model_fields}
    return type(feast)(**{**fields, "offline_store": {"type": "spark"}})


def offline_table(spec: PipelineSpec, feast: FeastResource) -> Path:
    """The pipeline's offline Parquet table (partitioned by DAY_COLUMN)."""
    return feast.offline_data_dir / f"{spec.name}_spark"


def feast_definitions(spec: PipelineSpec, feast: FeastResource) -> list[Any]:
    """Entity and feature view of the spec (as mlops_assets.features builds them), the view
    reading the Spark table; the day partitions prune Feast's point-in-time reads."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    from mlops_assets.features import entity_and_view

    source = SparkSource(
        name=f"{spec.name}_spark_source",
        path=str(offline_table(spec, feast)),
        file_format="parquet",
        timestamp_field=spec.timestamp,
        date_partition_column=DAY_COLUMN,
        date_partition_column_format="%Y-%m-%d",
    )
    return entity_and_view(spec, source)


def write_offline_partition(
    df: DataFrame, spec: PipelineSpec, feast: FeastResource, day: date
) -> Path:
    """Write the day's keys, features and label as the table's `day` partition (replaced)."""
    from pyspark.sql import functions as F

    columns = [spec.entity_key, spec.timestamp, *spec.feature_names, spec.label]
    table = offline_table(spec, feast)
    (
        df.select(*columns)
        .withColumn(DAY_COLUMN, F.lit(day.isoformat()))
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(DAY_COLUMN)
        .parquet(str(table))
    )
    return table


def written_days(session: SparkSession, spec: PipelineSpec, feast: FeastResource) -> set[date]:
    """The days the offline table holds (from its partition folders, no data read)."""
    table = offline_table(spec, feast)
    prefix = f"{DAY_COLUMN}="
    if not table.exists():
        return set()
    return {
        date.fromisoformat(p.name.removeprefix(prefix))
        for p in table.iterdir()
        if p.is_dir() and p.name.startswith(prefix)
    }


def label_rows(
    session: SparkSession, spec: PipelineSpec, feast: FeastResource, days: list[date]
) -> DataFrame:
    """Keys, timestamps and labels of `days` from the offline table (Spark, not collected)."""
    from pyspark.sql import functions as F

    table = session.read.parquet(str(offline_table(spec, feast)))
    wanted = [d.isoformat() for d in days]
    return table.where(F.col(DAY_COLUMN).isin(wanted)).select(
        spec.entity_key, spec.timestamp, spec.label
    )


def historical_features(feast: FeastResource, entity_df: DataFrame, spec: PipelineSpec) -> Any:
    """Feast's point-in-time join of the spec's features onto `entity_df` (keys, event
    timestamp, any other columns), by the Spark offline store: a Spark DataFrame."""
    from mlops_assets.features import feature_refs

    job = (
        spark_feast(feast)
        .store()
        .get_historical_features(entity_df=entity_df, features=feature_refs(spec))
    )
    return job.to_spark_df()


def rows_by_day(
    session: SparkSession, spec: PipelineSpec, feast: FeastResource, days: list[date]
) -> dict[date, int]:
    """Rows of each of `days` that the offline table holds (days it lacks are left out)."""
    from pyspark.sql import functions as F

    present = sorted(written_days(session, spec, feast) & set(days))
    if not present:
        return {}
    table = session.read.parquet(str(offline_table(spec, feast)))
    counts = (
        table.where(F.col(DAY_COLUMN).isin([d.isoformat() for d in present]))
        .groupBy(DAY_COLUMN)
        .count()
        .collect()
    )
    return {date.fromisoformat(str(r[0])): int(r[1]) for r in counts}


def write_online_on_executors(rows: DataFrame, spec: PipelineSpec, feast: FeastResource) -> int:
    """Write `rows` (keys, timestamp, features; one row per entity) to the online store from
    the executors; returns the rows written. A sqlite store has one writer at a time, so its
    rows go through one task (in key order); other stores are written by every partition."""
    from feast.infra.common.serde import SerializedArtifacts
    from pyspark.sql import functions as F

    from mlops_assets.features import feature_view_name

    store = spark_feast(feast).store()
    view = store.get_feature_view(feature_view_name(spec))
    artifacts = SerializedArtifacts.serialize(feature_view=view, repo_config=store.config)
    if feast.online_store_config().get("type", "sqlite") == "sqlite":
        rows = rows.coalesce(1).sortWithinPartitions(spec.entity_key)

    def write_batches(batches: Any) -> Any:
        import pandas as pd
        from feast.infra.provider import get_provider

        batch_view, _, _, config = artifacts.unserialize()
        provider = get_provider(config)
        for batch in batches:
            if len(batch):
                provider.ingest_df(batch_view, batch)
            yield pd.DataFrame({"written": [len(batch)]})

    written = rows.mapInPandas(write_batches, "written long").agg(F.sum("written")).collect()
    return int(written[0][0] or 0)
