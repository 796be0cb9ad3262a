"""The spark engine's data assets: raw_data, validated_data and features as Spark DataFrames.

Same keys, partitions, checks and metadata names as the pandas assets; their values are Spark
DataFrames stored by the `spark_io_manager` (SparkTableIOManager: Parquet tables written by
the executors). pandas assets downstream (model_performance) read those tables as pandas.
"""

from typing import TYPE_CHECKING, Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DagsterType,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    TypeCheck,
    TypeCheckContext,
    asset,
)

from mlops_assets.data import SourceError, partition_day, partitioned
from mlops_assets.features import FEAST_WRITE_POOL, feature_view_name
from mlops_assets.keys import asset_ins, asset_key
from mlops_assets.spark_engine import offline, reading
from mlops_assets.spark_engine import validation as spark_validation
from mlops_assets.spec import PipelineSpec
from mlops_assets.validation import check_extra_expectations, gx_check_spec, validated_outputs
from mlops_resources.feast_store import FeastResource
from mlops_resources.spark import SPARK_IO_MANAGER, SparkResource
from mlops_resources.validation import GreatExpectationsResource

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def is_spark_frame(_: TypeCheckContext, value: Any) -> TypeCheck:
    from pyspark.sql import DataFrame

    if isinstance(value, DataFrame):
        return TypeCheck(success=True)
    return TypeCheck(success=False, description=f"expected a Spark DataFrame, got {type(value)}")


SparkFrame = DagsterType(
    name="SparkDataFrame", type_check_fn=is_spark_frame, description="A Spark DataFrame."
)


def row_hash_sum(df: "DataFrame") -> "Column":
    """The sum of every row's 64-bit hash, as an exact decimal (no overflow under ANSI SQL):
    a content hash that does not depend on row order or partitioning."""
    from pyspark.sql import functions as F

    return F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)"))


def hash_text(total: object) -> str:
    """A row_hash_sum as 16 hex digits."""
    return f"{int(total or 0) & 0xFFFFFFFFFFFFFFFF:016x}"


def table_facts(df: "DataFrame") -> tuple[int, str]:
    """(rows, content hash) of a Spark DataFrame, in one pass on the executors."""
    from pyspark.sql import functions as F

    row = df.agg(F.count(F.lit(1)).alias("rows"), row_hash_sum(df).alias("h")).first()
    return int(row["rows"]), hash_text(row["h"])


def spark_schema(df: "DataFrame") -> TableSchema:
    return TableSchema(columns=[TableColumn(name=n, type=t) for n, t in df.dtypes])


def build_spark_raw_data(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "raw_data"),
        description=f"Rows of {spec.name} read by Spark from {spec.source.path}, one UTC day a "
        "partition (engine: spark).",
        kinds={"spark", "parquet" if spec.source.path.endswith("parquet") else "csv"},
        io_manager_key=SPARK_IO_MANAGER,
        dagster_type=SparkFrame,
    )
    def raw_data(context: AssetExecutionContext, spark: SparkResource) -> Output[Any]:
        day = partition_day(context.partition_key)
        try:
            df, files = reading.read_partition(spark.session(), spec, day)
        except SourceError as exc:
            raise Failure(str(exc)) from exc
        rows, version = table_facts(df)
        context.log.info(f"Spark read {rows} rows for {day} from {len(files)} file(s)")
        return Output(
            df,
            data_version=DataVersion(version),
            metadata={
                "dagster/row_count": rows,
                "dagster/column_schema": spark_schema(df),
                "content_hash": version,
                "source_files": MetadataValue.json([str(f) for f in files]),
                "engine": "spark",
            },
        )

    return raw_data


def build_spark_validated_data(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "validated_data"),
        ins=asset_ins(spec, "raw_data"),
        description="raw_data with the spec's types applied by Spark; the GX suite, run on the "
        "Spark DataFrame, gates everything downstream (blocking check).",
        check_specs=[
            gx_check_spec(spec, "Great Expectations suite built from the pipeline spec (on Spark).")
        ],
        kinds={"spark", "great_expectations"},
        io_manager_key=SPARK_IO_MANAGER,
        dagster_type=SparkFrame,
    )
    def validated_data(
        context: AssetExecutionContext, gx: GreatExpectationsResource, raw_data: Any
    ):
        day = partition_day(context.partition_key)
        check_extra_expectations(gx, spec)
        # Each expectation is a Spark job over the day: keep the typed rows cached meanwhile.
        df = spark_validation.standardize(raw_data, spec).cache()
        outcome = spark_validation.validate(gx, df, spec, day)
        yield from validated_outputs(
            context, spec, day, df, outcome, df.count(), spark_schema(df), engine="spark"
        )
        df.unpersist()  # the output was written when it was yielded

    return validated_data


def build_spark_features(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "features"),
        ins=asset_ins(spec, "validated_data"),
        description="Feast feature view for the spec's features: the day's rows written by "
        "Spark as a partition of the offline table that Feast's Spark offline store reads.",
        kinds={"feast", "spark"},
        pool=FEAST_WRITE_POOL,
    )
    def features(
        context: AssetExecutionContext, feast: FeastResource, validated_data: Any
    ) -> Output[None]:
        from pyspark.sql import functions as F

        day = partition_day(context.partition_key)
        table = offline.write_offline_partition(validated_data, spec, feast, day)
        offline.spark_feast(feast).apply(offline.feast_definitions(spec, feast))
        facts = validated_data.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(spec.entity_key).alias("entities"),
            row_hash_sum(validated_data).alias("h"),
        ).first()
        context.log.info(f"Spark wrote {facts['rows']} rows of {day} to the offline table")
        return Output(
            None,
            data_version=DataVersion(hash_text(facts["h"])),
            metadata={
                "feature_view": feature_view_name(spec),
                "features": MetadataValue.json(spec.feature_names),
                "rows_written": int(facts["rows"]),
                "offline_table": MetadataValue.path(str(table)),
                "entities": int(facts["entities"]),
                "engine": "spark",
            },
        )

    return features


def build_spark_online_features(spec: PipelineSpec) -> AssetsDefinition:
    """The day's newest feature values per entity written to the Feast online store (as the
    pandas engine's online_features): Spark keeps each entity's newest row of the day's
    offline partition, and the executors write those rows (offline.write_online_on_executors);
    the driver never collects them."""

    @asset(
        **partitioned(spec, "online_features"),
        deps=[asset_key(spec, "features")],
        description="The day's newest feature values per entity in the Feast online store, "
        "chosen by Spark from the offline table's day partition.",
        kinds={"feast", "spark"},
        op_tags={"dagster/priority": "-1"},
    )
    def online_features(
        context: AssetExecutionContext, feast: FeastResource, spark: SparkResource
    ) -> Output[None]:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        day = partition_day(context.partition_key)
        table = spark.session().read.parquet(str(offline.offline_table(spec, feast)))
        columns = [spec.entity_key, spec.timestamp, *spec.feature_names]
        newest = Window.partitionBy(spec.entity_key).orderBy(F.col(spec.timestamp).desc())
        rows = (
            table.where(F.col(offline.DAY_COLUMN) == F.lit(day.isoformat()))
            .select(*columns)
            .withColumn("_rank", F.row_number().over(newest))
            .where(F.col("_rank") == 1)
            .drop("_rank")
        )
        written = offline.write_online_on_executors(rows, spec, feast)
        context.log.info(f"wrote the newest row of {written} entities of {day} online")
        return Output(
            None,
            metadata={
                "feature_view": feature_view_name(spec),
                "entities_written": written,
                "online_store": str(feast.online_store_config().get("type", "sqlite")),
                "engine": "spark",
            },
        )

    return online_features
