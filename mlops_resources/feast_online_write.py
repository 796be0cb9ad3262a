"""Bulk writes to Feast's sqlite online store, selected by FeastResource for the embedded default.

`FeatureStore.write_to_online_store` on Feast's own sqlite store builds a protobuf per value in
Python and runs one `execute` per (entity, feature). Here, through Feast's extension points (a
provider class and an online store class named in the repo config), the same call encodes
each column at once (numpy for numbers, one protobuf per distinct value for strings and bools)
and writes each entity's features with one statement of an `executemany`, in one transaction.

The rows are those Feast's stock write stores, byte for byte: same table, entity key, value
and value_text bytes, event_ts integer, same upsert (the last write wins, whatever its
timestamp: Feast's sqlite store does not compare them). Reads are Feast's own `online_read`.
A view or frame this module cannot encode exactly (another dtype, nulls in keys or
timestamps, vector or value_num columns...) takes Feast's stock path unchanged.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.infra.passthrough_provider import PassthroughProvider
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import _run_pyarrow_field_mapping
from feast.value_type import ValueType

BULK_STORE = f"{__name__}.BulkSqliteOnlineStore"
BULK_PROVIDER = f"{__name__}.BulkWriteProvider"

# Protobuf tags of feast.types.Value fields: (field number << 3) | wire type.
DOUBLE_TAG, FLOAT_TAG, INT32_TAG, INT64_TAG = 0x29, 0x35, 0x18, 0x20
INT_BOUNDS = {ValueType.INT32: 2**31, ValueType.INT64: 2**63}
EPOCH = datetime(1970, 1, 1)
MICROS_PER = {"us": 1, "ms": 1000, "s": 1_000_000}  # and ns: floor-divided by 1,000
MAX_FEATURES = 16_000  # 2 parameters a feature in one statement: sqlite allows 32,766

Encoded = tuple[list[bytes], list[Any]]  # (ValueProto bytes, value_text) per row


class BulkSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's sqlite online store config, for BulkSqliteOnlineStore (`path` as sqlite's)."""

    type: Literal["mlops_resources.feast_online_write.BulkSqliteOnlineStore"] = BULK_STORE  # type: ignore[assignment]


class BulkSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SqliteOnlineStore (same tables, reads and materialization) with `write_frame`."""

    def write_frame(self, config: RepoConfig, view: FeatureView, df: pd.DataFrame) -> bool:
        """Upsert `df`'s rows as Feast's stock write would; False (nothing written) when the
        frame or view needs Feast's own conversion."""
        encoded = encode_rows(config, view, df)
        if encoded is None:
            return False
        keys, columns, event_ts, created_ts = encoded
        names = [f.name for f in view.features]
        versioned = config.registry.enable_online_feature_view_versioning
        table = _quote_id(_table_id(config.project, view, versioned))
        last = 2 * len(names) + 2
        values = ", ".join(
            f"(?1, '{name.replace(chr(39), chr(39) * 2)}', ?{2 * i + 2}, ?{2 * i + 3}, "
            f"?{last}, ?{last + 1})"
            for i, name in enumerate(names)
        )
        sql = (
            f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, "
            f"created_ts) VALUES {values} ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts;"
        )
        # Entities in key order (stable: a key's later rows still win), so the b-trees fill
        # in order; each entity's features go in one statement, its key bound once.
        order = np.argsort(np.array(keys, dtype=bytes), kind="stable").tolist()
        parts = [keys]
        for blobs, texts in columns:
            parts += [blobs, texts]
        rows = list(zip(*parts, event_ts, created_ts, strict=True))
        conn = self._get_conn(config)
        with conn:
            conn.executemany(sql, map(rows.__getitem__, order))
        return True


class BulkWriteProvider(PassthroughProvider):
    """Feast's local provider; `ingest_df` (behind `write_to_online_store`) writes through
    BulkSqliteOnlineStore.write_frame when it can, else Feast's stock path."""

    def ingest_df(self, feature_view: Any, df: pd.DataFrame, field_mapping: Any = None) -> None:
        store = self.online_store
        if type(feature_view) is FeatureView and isinstance(store, BulkSqliteOnlineStore):
            if store.write_frame(self.repo_config, feature_view, df):
                return
        super().ingest_df(feature_view, df, field_mapping)


def encode_rows(
    config: RepoConfig, view: FeatureView, df: pd.DataFrame
) -> tuple[list[bytes], list[Encoded], list[int], list[Any]] | None:
    """Entity keys, (value bytes, value_text) per feature, event_ts and created_ts of each
    row, as Feast's provider and sqlite store compute them; None if not encoded exactly."""
    store = config.online_store
    if (
        config.entity_key_serialization_version != 3
        or store.vector_enabled
        or getattr(store, "enable_openai_compatible_store", False)
        or view.batch_source is None
        or not 0 < len(view.features) < MAX_FEATURES
    ):
        return None
    table = pa.Table.from_pandas(df)  # as Feast's provider does
    if view.batch_source.field_mapping:
        table = _run_pyarrow_field_mapping(table, view.batch_source.field_mapping)
    batches = table.to_batches()
    if len(batches) != 1:  # Feast converts only the first batch: leave such frames to it
        return None
    batch = batches[0]
    keys = entity_keys({c.name: c.dtype.to_value_type() for c in view.entity_columns}, batch)
    event_ts = epoch_seconds(batch, view.batch_source.timestamp_field)
    created_field = view.batch_source.created_timestamp_column
    created_ts = epoch_seconds(batch, created_field) if created_field else [None] * len(batch)
    if keys is None or event_ts is None or created_ts is None:
        return None
    columns = []
    for field in view.features:
        encoded = encode_values(batch, field.name, field.dtype.to_value_type())
        if encoded is None:
            return None
        columns.append(encoded)
    return keys, columns, event_ts, created_ts


def column(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, pa.DataType] | None:
    """A column as Feast's conversion reads it (`to_numpy(zero_copy_only=False)`), its type."""
    if name not in batch.schema.names:
        return None
    array = batch.column(name)
    return array.to_numpy(zero_copy_only=False), array.type


def is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def entity_keys(join_keys: dict[str, ValueType], batch: pa.RecordBatch) -> list[bytes] | None:
    """Feast's serialize_entity_key (version 3) of each row: the sorted key names, then per
    key its value type, byte length and bytes (utf-8, or little-endian int32/int64)."""
    names = sorted(join_keys)
    parts = []
    for name in names:
        found, value_type = column(batch, name), join_keys[name]
        if found is None or batch.column(name).null_count:
            return None  # Feast fails on a null key
        values, arrow_type = found
        head = value_type.value.to_bytes(4, "little")
        if value_type == ValueType.STRING and is_text(arrow_type):
            encoded = [v.encode("utf-8") for v in values.tolist()]
            parts.append([head + len(b).to_bytes(4, "little") + b for b in encoded])
        elif value_type in INT_BOUNDS and values.dtype.kind in "iu":
            width = 4 if value_type == ValueType.INT32 else 8
            if not in_int_range(values, value_type):
                return None
            raw = values.astype(f"<i{width}").view(np.uint8).reshape(-1, width)
            head += width.to_bytes(4, "little")
            parts.append([head + b for b in fixed_width(raw, width)])
        else:
            return None
    prefix = serialize_entity_key_prefix(names, entity_key_serialization_version=3)
    if len(parts) == 1:
        return [prefix + b for b in parts[0]]
    return [prefix + b"".join(row) for row in zip(*parts, strict=True)]


def encode_values(batch: pa.RecordBatch, name: str, value_type: ValueType) -> Encoded | None:
    """ValueProto bytes and sqlite value_text of a feature column, as Feast computes them
    (null: b"" and None); None for columns, types or values left to Feast."""
    found = column(batch, name)
    if found is None:
        return None
    values, arrow_type = found
    kind = values.dtype.kind
    if value_type == ValueType.DOUBLE and values.dtype == np.float64:
        return fixed_values(values, values.astype("<f8"), DOUBLE_TAG)
    if value_type == ValueType.FLOAT and kind == "f":
        with np.errstate(over="ignore"):  # out-of-range doubles become inf, as in protobuf
            single = values.astype("<f4")
        return fixed_values(values, single, FLOAT_TAG)
    if value_type in INT_BOUNDS and kind in "iuf":
        return int_values(values, value_type)
    if (value_type == ValueType.STRING and is_text(arrow_type)) or (
        value_type == ValueType.BOOL and pa.types.is_boolean(arrow_type)
    ):
        return distinct_values(values, value_type)
    return None


def fixed_values(values: np.ndarray, stored: np.ndarray, tag: int) -> Encoded:
    """double_val / float_val: the tag, then the little-endian value."""
    width = stored.dtype.itemsize
    raw = np.empty((len(stored), width + 1), dtype=np.uint8)
    raw[:, 0] = tag
    raw[:, 1:] = stored.view(np.uint8).reshape(-1, width)
    texts = list(map(str, stored.astype(np.float64).tolist()))
    return with_nulls(fixed_width(raw, width + 1), texts, np.isnan(values))


def int_values(values: np.ndarray, value_type: ValueType) -> Encoded | None:
    """int32_val / int64_val: the tag, then the varint of the value (two's complement,
    64-bit for negative int32 too). Floats are Arrow's nullable ints, as int(x) of Feast."""
    nulls = np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), dtype=bool)
    present = values[~nulls]
    if values.dtype.kind == "f" and not np.isfinite(present).all():
        return None
    if not in_int_range(present, value_type):
        return None
    ints = np.zeros(len(values), dtype=np.int64)
    ints[~nulls] = present.astype(np.int64)
    unsigned = ints.view(np.uint64)
    tag = INT32_TAG if value_type == ValueType.INT32 else INT64_TAG
    raw = np.zeros((len(ints), 11), dtype=np.uint8)
    raw[:, 0] = tag
    lengths = np.full(len(ints), 2)  # the tag and the first 7-bit group
    for i in range(10):
        group = (unsigned >> np.uint64(7 * i)) & np.uint64(0x7F)
        more = (unsigned >> np.uint64(7 * i + 7)) != 0 if i < 9 else np.zeros(len(ints), bool)
        raw[:, i + 1] = group | (more.astype(np.uint64) << np.uint64(7))
        lengths += more
    blobs: list[bytes] = [b""] * len(ints)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        for row, blob in zip(rows.tolist(), fixed_width(raw[rows, :length], length), strict=True):
            blobs[row] = blob
    return with_nulls(blobs, list(map(str, ints.tolist())), nulls)


def distinct_values(values: np.ndarray, value_type: ValueType) -> Encoded:
    """string_val / bool_val: Feast's own ValueProto bytes of each distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    blobs, texts, string = [], [], value_type == ValueType.STRING
    for value in uniques.tolist():
        proto = ValueProto(string_val=str(value)) if string else ValueProto(bool_val=bool(value))
        blobs.append(proto.SerializeToString())
        texts.append(str(value) if string else str(bool(value)))  # sqlite's value_text
    lookup_blobs = np.array([*blobs, b""], dtype=object)  # code -1 (null): the last entry
    lookup_texts = np.array([*texts, None], dtype=object)
    return lookup_blobs[codes].tolist(), lookup_texts[codes].tolist()


def in_int_range(values: np.ndarray, value_type: ValueType) -> bool:
    bound = INT_BOUNDS[value_type]
    return not len(values) or (values.min() >= -bound and values.max() < bound)


def fixed_width(raw: np.ndarray, width: int) -> list[bytes]:
    """Each row of a (rows, width) uint8 array as bytes."""
    return np.ascontiguousarray(raw).view(f"V{width}").ravel().tolist()


def with_nulls(blobs: list[bytes], texts: list[Any], nulls: np.ndarray) -> Encoded:
    for row in np.flatnonzero(nulls).tolist():
        blobs[row], texts[row] = b"", None
    return blobs, texts


def epoch_seconds(batch: pa.RecordBatch, name: str) -> list[int] | None:
    """The integer Feast's sqlite store writes for each timestamp: Python's
    `int(naive.timestamp())` of the UTC wall time read as local time (its adapter), computed
    for each distinct second and its microseconds added as CPython does."""
    found = column(batch, name)
    if found is None or found[0].dtype.kind != "M" or np.isnat(found[0]).any():
        return None
    values = found[0]
    unit, count = np.datetime_data(values.dtype)
    if (unit != "ns" and unit not in MICROS_PER) or count != 1:
        return None
    raw = values.view(np.int64)
    micros = raw // 1000 if unit == "ns" else raw * MICROS_PER[unit]  # floor, as pandas
    seconds, fraction = np.divmod(micros, 1_000_000)
    distinct, inverse = np.unique(seconds, return_inverse=True)
    try:
        local = [int((EPOCH + timedelta(seconds=s)).timestamp()) for s in distinct.tolist()]
    except (OverflowError, ValueError):
        return None
    stamps = np.array(local, dtype=np.int64)[inverse].astype(np.float64) + fraction / 1e6
    return stamps.astype(np.int64).tolist()  # int() truncates toward zero, as astype does
