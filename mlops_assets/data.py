"""Ingestion stage: raw_data reads the spec's source files for one daily partition."""

import glob
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DailyPartitionsDefinition,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
)

from mlops_assets.frames import Frame
from mlops_assets.memory_bound import require_fits
from mlops_assets.ml.dataset import content_hash as content_hash  # the DataVersion
from mlops_assets.spec import PipelineSpec, SourceSpec
from mlops_resources.storage import mlops_home

DATA_ROOTS_VAR = "MLOPS_DATA_ROOTS"


class SourceError(ValueError):
    """A source file that cannot be read; the message names the file."""


def daily_partitions(spec: PipelineSpec) -> DailyPartitionsDefinition:
    end = spec.partitions.end
    return DailyPartitionsDefinition(
        start_date=spec.partitions.start.isoformat(),
        end_date=end.isoformat() if end else None,
        timezone="UTC",
    )


def partitioned(spec: PipelineSpec, name: str) -> dict[str, Any]:
    """The @asset arguments every daily asset of a pipeline shares: its name under the
    pipeline's key prefix and group, and the daily partitions."""
    return {
        "name": name,
        "key_prefix": spec.name,
        "partitions_def": daily_partitions(spec),
        "group_name": spec.name,
    }


def partition_day(partition_key: str) -> date:
    """The date of a partition key; refuses anything that is not YYYY-MM-DD."""
    try:
        return date.fromisoformat(partition_key)
    except ValueError:
        raise Failure(f"partition key {partition_key!r} is not a YYYY-MM-DD date") from None


def day_of_path(spec: PipelineSpec, path: str) -> date | None:
    """The day a `{date}` source file is for, from its name; None if the name has no date."""
    prefix, _, suffix = spec.source_pattern().partition("{date}")
    try:
        return date.fromisoformat(path.removeprefix(prefix).removesuffix(suffix))
    except ValueError:
        return None


def newest_arrived_day(spec: PipelineSpec) -> date | None:
    """The newest day whose source file has arrived (the clock that decides which labels are
    delivered), for `{date}` sources; None when the path has no `{date}`."""
    if "{date}" not in spec.source.path:
        return None
    paths = glob.glob(spec.source_pattern().replace("{date}", "*"))
    return max((d for p in paths if (d := day_of_path(spec, p)) is not None), default=None)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day as aware datetimes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def table_schema(df: Frame) -> TableSchema:
    return TableSchema(
        columns=[TableColumn(name=str(c), type=str(t)) for c, t in df.dtypes.items()]
    )


def data_roots(spec: PipelineSpec) -> list[Path]:
    """Folders source files may be read from: the spec's folder, MLOPS_HOME and the folders
    listed in $MLOPS_DATA_ROOTS (separated by the OS path separator)."""
    extra = [Path(p) for p in os.environ.get(DATA_ROOTS_VAR, "").split(os.pathsep) if p]
    spec_folder = spec.spec_path.parent if spec.spec_path else Path.cwd()
    return [root.resolve() for root in (spec_folder, mlops_home(), *extra)]


def source_files(spec: PipelineSpec, day: date) -> list[Path]:
    """The day's source files; each must resolve (links followed) inside a data root."""
    pattern = spec.source_pattern().replace("{date}", day.isoformat())
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise SourceError(f"no source file matches {pattern} (partition {day.isoformat()})")
    for path in files:
        require_inside_roots(spec, path)
    return files


def require_inside_roots(spec: PipelineSpec, path: Path) -> None:
    """Refuse `path` (a SourceError) unless it resolves, links followed, inside a data root."""
    roots = data_roots(spec)
    if not any(path.resolve().is_relative_to(root) for root in roots):
        raise SourceError(
            f"{path}: outside the allowed data roots {[str(r) for r in roots]}; "
            f"add its folder to {DATA_ROOTS_VAR} to read it"
        )


def read_file(spec: PipelineSpec, path: Path, source: SourceSpec | None = None) -> Frame:
    """Read one CSV or Parquet file of `source` (default: the spec's source); any failure names
    the file and the reason."""
    import pandas as pd

    source = source or spec.source
    fmt = source.format or path.suffix.lstrip(".").lower()
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "csv":
            return pd.read_csv(path, sep=source.csv_delimiter, encoding=source.csv_encoding)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SourceError(f"{path}: cannot be read as {fmt}: {exc}") from exc
    raise SourceError(f"{path}: unsupported format '{fmt}' (use csv or parquet)")


def read_partition(spec: PipelineSpec, day: date) -> tuple[Frame, list[Path]]:
    """All source rows for a day. Without `{date}` in the path, rows are kept by timestamp."""
    import pandas as pd

    files = source_files(spec, day)
    frames = [read_file(spec, f) for f in files]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "{date}" not in spec.source.path:
        if spec.timestamp not in df.columns:
            raise SourceError(f"{files[0]}: timestamp column '{spec.timestamp}' is missing")
        start, end = day_bounds(day)
        ts = pd.to_datetime(df[spec.timestamp], utc=True, errors="coerce")
        df = df[(ts >= start) & (ts < end)].reset_index(drop=True)
    return df, files


def build_raw_data(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "raw_data"),
        description=f"Rows of {spec.name} read from {spec.source.path}, one UTC day a partition.",
        kinds={"pandas", "parquet" if spec.source.path.endswith("parquet") else "csv"},
    )
    def raw_data(context: AssetExecutionContext) -> Output[Frame]:
        day = partition_day(context.partition_key)
        try:
            require_fits(
                "the day's source files",
                context.partition_key,
                source_files(spec, day),
                csv_options={
                    "sep": spec.source.csv_delimiter,
                    "encoding": spec.source.csv_encoding,
                },
                fmt=spec.source.format,
            )
            df, files = read_partition(spec, day)
        except SourceError as exc:
            raise Failure(str(exc)) from exc
        context.log.info(f"read {len(df)} rows for {day} from {len(files)} file(s)")
        version = content_hash(df)
        return Output(
            df,
            data_version=DataVersion(version),
            metadata={
                "dagster/row_count": len(df),
                "dagster/column_schema": table_schema(df),
                "content_hash": version,
                "source_files": MetadataValue.json([str(f) for f in files]),
            },
        )

    return raw_data
