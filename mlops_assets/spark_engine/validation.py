"""validated_data with Spark: the spec's types applied to a Spark DataFrame and the GX suite
of mlops_assets.validation run on it through GX's Spark datasource.

The rules are the pandas engine's (build_expectations), with one translation: a type rule's
allowed types are named as Spark's types (DoubleType, LongType, ...) instead of pandas dtypes,
because GX checks a Spark column's type against pyspark.sql.types. Verdicts, counts and sample
values agree with the pandas engine's; only a failed type rule's observed type reads in Spark's
names (StringType for pandas' object).
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from mlops_assets.spec import PipelineSpec
from mlops_assets.validation import NUMERIC_TYPES, build_expectations
from mlops_resources.validation import (
    ExpectationConfig,
    GreatExpectationsResource,
    ValidationOutcome,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

TYPE_RULE = "expect_column_values_to_be_in_type_list"
# pandas dtype names of NUMERIC_TYPES -> the pyspark.sql.types classes GX checks on Spark.
SPARK_NUMERIC_TYPES = [
    "DoubleType",
    "FloatType",
    "LongType",
    "IntegerType",
    "ShortType",
    "ByteType",
    "DecimalType",
]


def converted_columns(df: DataFrame, spec: PipelineSpec) -> dict[str, Column]:
    """The spec's type for each column it names, as a Spark expression (null where a value
    does not convert): UTC timestamps, string keys, categoricals and class labels, doubles."""
    from pyspark.sql import functions as F

    targets: dict[str, str] = {spec.timestamp: "timestamp", spec.entity_key: "string"}
    for feature in spec.features:
        targets[feature.name] = "double" if feature.type == "numeric" else "string"
    targets[spec.label] = "string" if spec.is_classification else "double"
    types = dict(df.dtypes)
    return {
        column: as_timestamp(column, types[column])
        if target == "timestamp"
        else F.col(column).try_cast(target)
        for column, target in targets.items()
        if column in types and types[column] != target
    }


def as_timestamp(column: str, dtype: str) -> Column:
    """A column as UTC timestamps, as pandas' to_datetime(utc=True) reads it: integers are
    epoch nanoseconds (how Parquet nanosecond timestamps arrive, spark.sql.legacy.parquet.
    nanosAsLong), text is parsed, naive timestamps are UTC (the session's time zone)."""
    from pyspark.sql import functions as F

    if dtype in ("bigint", "int"):
        return F.timestamp_micros(F.floor(F.col(column) / 1000).cast("long"))
    return F.col(column).try_cast("timestamp")


def standardize(df: DataFrame, spec: PipelineSpec) -> DataFrame:
    """Apply the spec's types where every value of a column converts (one pass over the data
    counts the values each conversion would lose); a column that would lose a value keeps its
    type, so its type rule fails and shows the values. Nothing is dropped or invented."""
    from pyspark.sql import functions as F

    conversions = converted_columns(df, spec)
    if not conversions:
        return df
    lost = df.agg(
        *(
            F.sum((F.col(c).isNotNull() & converted.isNull()).cast("long")).alias(c)
            for c, converted in conversions.items()
        )
    ).first()
    clean = {c: expr for c, expr in conversions.items() if not (lost[c] or 0)}
    return df.withColumns(clean) if clean else df


def spark_expectations(spec: PipelineSpec, day: date) -> list[ExpectationConfig]:
    """build_expectations(spec, day) with type rules naming Spark's numeric types."""
    suite = []
    for config in build_expectations(spec, day):
        if config.type == TYPE_RULE and config.kwargs.get("type_list") == NUMERIC_TYPES:
            config = ExpectationConfig(
                config.type, {**config.kwargs, "type_list": SPARK_NUMERIC_TYPES}
            )
        suite.append(config)
    return suite


def validate(
    gx: GreatExpectationsResource, df: DataFrame, spec: PipelineSpec, day: date
) -> ValidationOutcome:
    """The spec's GX suite for `day` run on the (standardized) Spark DataFrame."""
    return gx.validate(df, f"{spec.name}_{day:%Y%m%d}", spark_expectations(spec, day), "spark")
