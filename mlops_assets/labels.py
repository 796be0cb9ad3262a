"""Labels delivered as their own source (spec `labels:`, docs/configuration.md#labels): one file
per day of events, counted only once delivered, joined to the features on entity key + event
timestamp. Without a label source the label is a column of the feature source and these
functions read it from the rows already at hand."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_assets.data import SourceError, day_bounds, read_file, require_inside_roots
from mlops_assets.frames import Frame
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_VALUES = 5  # offending values quoted in an error


class LabelSourceError(ValueError):
    """A label file that cannot be used; the message names the file, the column and the rule."""


def labels_file(spec: PipelineSpec, day: date) -> Path:
    """The label source's file for the events of `day` (it may not have arrived)."""
    return Path(spec.labels_pattern().replace("{date}", day.isoformat()))


def label_signature(spec: PipelineSpec, day: date) -> str | None:
    """The delivered label file of `day` as "mtime:size" (a new delivery changes it), or None
    while it has not arrived."""
    try:
        stat = labels_file(spec, day).stat()
    except OSError:
        return None
    return f"{stat.st_mtime_ns}:{stat.st_size}"


def label_row_count(spec: PipelineSpec, day: date) -> int:
    """Rows in `day`'s label file, 0 when it has not arrived (Parquet: from the footer)."""
    path = labels_file(spec, day)
    if not path.is_file():
        return 0
    if path.suffix.lower() == ".parquet" or (spec.labels and spec.labels.format == "parquet"):
        import pyarrow.parquet as pq

        try:
            require_inside_roots(spec, path)
        except SourceError as exc:
            raise LabelSourceError(str(exc)) from exc
        try:
            return pq.read_metadata(path).num_rows
        except (OSError, ValueError) as exc:  # pyarrow's errors do not name the file
            raise LabelSourceError(f"{path}: not a readable Parquet label file ({exc})") from exc
    return len(read_labels(spec, day))


def read_labels(spec: PipelineSpec, day: date) -> Frame:
    """The labels of `day`'s events: entity key, timestamp and label, typed as validated_data
    types them. The file must have arrived; any broken rule is a LabelSourceError naming the
    file, the column and the rule, with the number of rows and sample values."""
    from mlops_assets.validation import standardize

    path = labels_file(spec, day)
    if not path.is_file():
        raise LabelSourceError(
            f"{path}: the label file of {day} has not arrived (labels.path of spec "
            f"{spec.spec_path}); it is due {spec.monitoring.performance.label_delay_days} "
            "day(s) after its events"
        )
    assert spec.labels is not None
    try:
        require_inside_roots(spec, path)
        frame = read_file(spec, path, source=spec.labels)
    except SourceError as exc:
        raise LabelSourceError(str(exc)) from exc
    columns = [spec.entity_key, spec.timestamp, spec.label]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LabelSourceError(
            f"{path}: column(s) {missing} missing: a label file holds {columns} "
            f"(found {list(frame.columns)})"
        )
    frame = standardize(frame[columns], spec)
    check_labels(spec, day, path, frame)
    return frame


def check_labels(spec: PipelineSpec, day: date, path: Path, frame: pd.DataFrame) -> None:
    """The rules of a label file: no missing value, a label of the known classes (or numeric
    for regression), timestamps inside the day, one label per entity and timestamp."""
    start, end = day_bounds(day)
    times = frame[spec.timestamp]
    rules = [(column, "must not be null", frame[column].isna()) for column in frame.columns]
    if str(times.dtype).startswith("datetime64"):
        rules.append(
            (
                spec.timestamp,
                f"must lie in {day} (UTC)",
                times.notna() & ((times < start) | (times >= end)),
            )
        )
    else:
        rules.append((spec.timestamp, "must be a timestamp", times.notna()))
    label = frame[spec.label]
    if spec.classes is not None:
        rules.append(
            (
                spec.label,
                f"must be one of {spec.classes}",
                label.notna() & ~label.isin(spec.classes),
            )
        )
    elif not spec.is_classification and label.dtype != "float64":
        rules.append((spec.label, "must be numeric", label.notna()))
    keys = [spec.entity_key, spec.timestamp]
    rules.append(
        (
            f"{spec.entity_key}+{spec.timestamp}",
            "must be unique",
            frame.duplicated(keys, keep=False),
        )
    )
    for column, rule, broken in rules:
        if broken.any():
            values = frame.loc[broken, column if column in frame else spec.entity_key]
            sample = [str(v) for v in values.head(SAMPLE_VALUES)]
            raise LabelSourceError(
                f"{path}: column '{column}' {rule}: {int(broken.sum())} of {len(frame)} rows "
                f"break it, e.g. {sample}"
            )


def with_labels(spec: PipelineSpec, day: date, rows: Frame) -> Frame:
    """`rows` of `day` (validated_data) with their label: as they are without a label source,
    else joined with the day's delivered label file on entity key + timestamp (rows without a
    label are left out)."""
    if spec.labels is None:
        return rows
    keys = [spec.entity_key, spec.timestamp]
    return rows.drop(columns=[spec.label], errors="ignore").merge(
        read_labels(spec, day), on=keys, how="inner"
    )
