"""The memory bound of a step: the data one step may load, checked before it is loaded.

A day (raw_data) or a training window (training_set) larger than the bound fails the step with
a message naming the partition, its estimated in-memory size and the setting to change, instead
of being read until the operating system kills the process. The in-memory size is estimated
from the files' row counts and the pandas size of a sample of their first rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dagster import Failure

MAX_STEP_DATA_VAR = "MLOPS_MAX_STEP_DATA_MB"
# Without the setting: a quarter of the machine's memory, so that a step's peak (about 3x the
# data it holds) stays inside it.
DEFAULT_SHARE = 0.25
SAMPLE_ROWS = 20_000
MB = 1024 * 1024


def machine_memory_bytes() -> int:
    """Physical memory of this machine (POSIX sysconf)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_step_bytes() -> int:
    """The bound: $MLOPS_MAX_STEP_DATA_MB (megabytes, may be fractional), else a quarter of
    the machine's memory."""
    value = os.environ.get(MAX_STEP_DATA_VAR, "").strip()
    if not value:
        return int(machine_memory_bytes() * DEFAULT_SHARE)
    try:
        megabytes = float(value)
    except ValueError:
        raise Failure(f"{MAX_STEP_DATA_VAR}={value!r} is not a number of megabytes") from None
    if megabytes <= 0:
        raise Failure(f"{MAX_STEP_DATA_VAR}={value!r}: give a positive number of megabytes")
    return int(megabytes * MB)


def parquet_estimate(path: Path, columns: Sequence[str] | None = None) -> tuple[int, int]:
    """(rows, estimated pandas bytes) of a Parquet file: its row count from the footer and the
    deep memory size per row of its first SAMPLE_ROWS rows."""
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    rows = handle.metadata.num_rows
    if rows == 0:
        return 0, 0
    batch = next(handle.iter_batches(batch_size=SAMPLE_ROWS, columns=columns))
    sample = batch.to_pandas()
    per_row = sample.memory_usage(deep=True, index=False).sum() / max(len(sample), 1)
    return rows, int(per_row * rows)


def csv_estimate(path: Path, read_options: dict | None = None) -> tuple[int, int]:
    """(estimated rows, estimated pandas bytes) of a CSV file, from the bytes and the pandas
    size of its first SAMPLE_ROWS rows."""
    import pandas as pd

    size = path.stat().st_size
    sample = pd.read_csv(path, nrows=SAMPLE_ROWS, **(read_options or {}))
    if sample.empty:
        return 0, 0
    with open(path, "rb") as handle:
        head = b"".join(handle.readline() for _ in range(len(sample) + 1))
    rows = int(len(sample) * size / max(len(head), 1))
    per_row = sample.memory_usage(deep=True, index=False).sum() / len(sample)
    return rows, int(per_row * rows)


def file_estimate(
    path: Path,
    columns: Sequence[str] | None = None,
    csv_options: dict | None = None,
    fmt: str | None = None,
) -> tuple[int, int]:
    """(rows, estimated pandas bytes) of a Parquet or CSV file (`fmt`, else its suffix, says
    which; `csv_options`: read_csv's); (0, 0) for a file that cannot be read so: the read that
    follows fails naming the file and the reason (an empty, truncated or mislabelled file, a
    wrong encoding)."""
    try:
        if (fmt or path.suffix.lstrip(".")).lower() == "csv":
            return csv_estimate(path, csv_options)
        return parquet_estimate(path, columns)
    except (OSError, ValueError, UnicodeDecodeError, StopIteration):
        return 0, 0  # pyarrow's ArrowInvalid and pandas' parser errors are ValueErrors


def require_fits(
    what: str,
    partition: str,
    paths: Sequence[Path],
    columns: Sequence[str] | None = None,
    csv_options: dict | None = None,
    fmt: str | None = None,
) -> tuple[int, int]:
    """Fail unless the files' estimated in-memory size is within the bound; returns (rows,
    bytes). `what` names the data ("the day's source files", "the training window"); `fmt`
    (csv or parquet) overrides the files' suffixes."""
    rows = size = 0
    for path in paths:
        file_rows, file_bytes = file_estimate(Path(path), columns, csv_options, fmt)
        rows += file_rows
        size += file_bytes
    bound = max_step_bytes()
    if size > bound:
        origin = (
            f"{MAX_STEP_DATA_VAR}={os.environ[MAX_STEP_DATA_VAR]}"
            if os.environ.get(MAX_STEP_DATA_VAR, "").strip()
            else f"the default, {DEFAULT_SHARE:.0%} of this machine's "
            f"{machine_memory_bytes() / MB:,.0f} MB"
        )
        raise Failure(
            f"partition {partition}: {what} hold {rows:,} rows, about {size / MB:,.1f} MB in "
            f"memory, over the step memory bound of {bound / MB:,.1f} MB ({origin}). Raise "
            f"{MAX_STEP_DATA_VAR} on a machine with more memory, or use smaller partitions "
            "(or a shorter model.training_window_days for the training window)."
        )
    return rows, size
