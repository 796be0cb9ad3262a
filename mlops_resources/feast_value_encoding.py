"""Feast's entity keys and feature values, encoded a whole Arrow column at a time.

Feast converts each value to a protobuf in Python. Here numbers are encoded with numpy and
strings and bools once per distinct value; the bytes are the ones Feast's own protobufs
serialize to. An entity's features go into one message with the wire layout of Feast's
`EntityKey` proto (`repeated string join_keys = 1; repeated Value entity_values = 2`), used
as a list of (feature name, value) pairs: `EntityKeyProto.FromString` reads it back.
A column or type not encoded exactly here gives None, and the caller takes Feast's own path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

# Protobuf tags of feast.types.Value fields: (field number << 3) | wire type.
DOUBLE_TAG, FLOAT_TAG, INT32_TAG, INT64_TAG = 0x29, 0x35, 0x18, 0x20
# ... and of EntityKey's join_keys (field 1) and entity_values (field 2), both length-delimited.
NAME_TAG, VALUE_TAG = 0x0A, 0x12
INT_BOUNDS = {ValueType.INT32: 2**31, ValueType.INT64: 2**63}


def varint(number: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([tag]) + varint(len(payload)) + payload


def name_field(name: str) -> bytes:
    """A feature's name as a join_keys element."""
    return delimited(NAME_TAG, name.encode("utf-8"))


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


def feature_fields(batch: pa.RecordBatch, name: str, value_type: ValueType) -> list[bytes] | None:
    """Per row, the feature's name field then its value field (the ValueProto Feast would
    store; an empty Value for a null); None for columns, types or values left to Feast."""
    found = column(batch, name)
    if found is None:
        return None
    values, arrow_type = found
    kind, prefix = values.dtype.kind, name_field(name)
    if value_type == ValueType.DOUBLE and values.dtype == np.float64:
        return fixed_fields(prefix, values, values.astype("<f8"), DOUBLE_TAG)
    if value_type == ValueType.FLOAT and kind == "f":
        with np.errstate(over="ignore"):  # out-of-range doubles become inf, as in protobuf
            single = values.astype("<f4")
        return fixed_fields(prefix, values, single, FLOAT_TAG)
    if value_type in INT_BOUNDS and kind in "iuf":
        return int_fields(prefix, values, value_type)
    if (value_type == ValueType.STRING and is_text(arrow_type)) or (
        value_type == ValueType.BOOL and pa.types.is_boolean(arrow_type)
    ):
        return distinct_fields(prefix, values, value_type)
    return None


def headed(prefix: bytes, tail: np.ndarray) -> list[bytes]:
    """`prefix` then each row of a (rows, width) uint8 array, as bytes."""
    raw = np.empty((len(tail), len(prefix) + tail.shape[1]), dtype=np.uint8)
    raw[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    raw[:, len(prefix) :] = tail
    return fixed_width(raw, raw.shape[1])


def fixed_fields(prefix: bytes, values: np.ndarray, stored: np.ndarray, tag: int) -> list[bytes]:
    """double_val / float_val: the tag, then the little-endian value."""
    width = stored.dtype.itemsize
    head = prefix + bytes([VALUE_TAG, width + 1, tag])
    fields = headed(head, stored.view(np.uint8).reshape(-1, width))
    return with_nulls(fields, prefix, np.isnan(values))


def int_fields(prefix: bytes, values: np.ndarray, value_type: ValueType) -> list[bytes] | None:
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
    raw = np.zeros((len(ints), 10), dtype=np.uint8)
    lengths = np.ones(len(ints), dtype=np.int64)  # 7-bit groups of each varint
    for i in range(10):
        group = (unsigned >> np.uint64(7 * i)) & np.uint64(0x7F)
        more = (unsigned >> np.uint64(7 * i + 7)) != 0 if i < 9 else np.zeros(len(ints), bool)
        raw[:, i] = group | (more.astype(np.uint64) << np.uint64(7))
        lengths += more
    tag = INT32_TAG if value_type == ValueType.INT32 else INT64_TAG
    fields: list[bytes] = [b""] * len(ints)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        head = prefix + bytes([VALUE_TAG, length + 1, tag])
        for row, field in zip(rows.tolist(), headed(head, raw[rows, :length]), strict=True):
            fields[row] = field
    return with_nulls(fields, prefix, nulls)


def distinct_fields(prefix: bytes, values: np.ndarray, value_type: ValueType) -> list[bytes]:
    """string_val / bool_val: Feast's own ValueProto bytes of each distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    string = value_type == ValueType.STRING
    fields = [
        prefix
        + delimited(
            VALUE_TAG,
            (
                ValueProto(string_val=str(v)) if string else ValueProto(bool_val=bool(v))
            ).SerializeToString(),
        )
        for v in uniques.tolist()
    ]
    lookup = np.array([*fields, prefix + delimited(VALUE_TAG, b"")], dtype=object)
    return lookup[codes].tolist()  # code -1 (null): the last entry


def in_int_range(values: np.ndarray, value_type: ValueType) -> bool:
    bound = INT_BOUNDS[value_type]
    return not len(values) or (values.min() >= -bound and values.max() < bound)


def fixed_width(raw: np.ndarray, width: int) -> list[bytes]:
    """Each row of a (rows, width) uint8 array as bytes."""
    return np.ascontiguousarray(raw).view(f"V{width}").ravel().tolist()


def with_nulls(fields: list[bytes], prefix: bytes, nulls: np.ndarray) -> list[bytes]:
    """Null rows get an empty Value, as Feast stores a null."""
    empty = prefix + delimited(VALUE_TAG, b"")
    for row in np.flatnonzero(nulls).tolist():
        fields[row] = empty
    return fields


def epoch_micros(batch: pa.RecordBatch, name: str) -> list[int] | None:
    """Microseconds since the epoch (UTC, floored) of a timestamp column without nulls."""
    found = column(batch, name)
    if found is None or found[0].dtype.kind != "M" or np.isnat(found[0]).any():
        return None
    return found[0].astype("datetime64[us]").view(np.int64).tolist()
