"""raw_data with Spark: a day's source files read by Spark, as the pandas engine reads them."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_assets.data import SourceError, day_bounds, source_files
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def file_format(spec: PipelineSpec, path: Path) -> str:
    """csv or parquet: the spec's `source.format`, else the file's extension."""
    fmt = spec.source.format or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "parquet"):
        raise SourceError(f"{path}: unsupported format '{fmt}' (use csv or parquet)")
    return fmt


def read_files(session: SparkSession, spec: PipelineSpec, files: list[Path]) -> DataFrame:
    """One DataFrame of `files` (all of one format). CSV columns are typed by Spark's schema
    inference, as pandas infers them; a file Spark cannot read names itself in the error."""
    fmt = file_format(spec, files[0])
    paths = [str(f) for f in files]
    try:
        if fmt == "parquet":
            return session.read.parquet(*paths)
        return session.read.csv(
            paths,
            header=True,
            inferSchema=True,
            sep=spec.source.csv_delimiter,
            encoding=spec.source.csv_encoding,
            mode="PERMISSIVE",
        )
    except Exception as exc:  # AnalysisException and friends: name the files
        raise SourceError(f"{paths}: cannot be read as {fmt}: {exc}") from exc


def read_partition(
    session: SparkSession, spec: PipelineSpec, day: date
) -> tuple[DataFrame, list[Path]]:
    """All source rows of a day as a Spark DataFrame; nothing is collected to the driver.

    The files are those the pandas engine reads (source_files: inside the data roots). Without
    `{date}` in the path, rows are kept by event timestamp within the UTC day.
    """
    from pyspark.sql import functions as F

    from mlops_assets.spark_engine.validation import as_timestamp

    files = source_files(spec, day)
    df = read_files(session, spec, files)
    if "{date}" not in spec.source.path:
        if spec.timestamp not in df.columns:
            raise SourceError(f"{files[0]}: timestamp column '{spec.timestamp}' is missing")
        start, end = day_bounds(day)
        ts = as_timestamp(spec.timestamp, dict(df.dtypes)[spec.timestamp])
        df = df.where((ts >= F.lit(start)) & (ts < F.lit(end)))
    return df, files
