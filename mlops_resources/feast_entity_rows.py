"""The embedded online store: Feast's sqlite store with one row per entity, selected by
FeastResource (`online_bulk_write`, the default).

Feast's own sqlite store keeps a row per (entity, feature), each inserted into the table, its
primary key and an index, after a protobuf built per value in Python: ~4,000 entities/s here,
and at most ~40,000 with bulk inserts of the same rows (docs/performance.md). This store, plugged
in through Feast's extension points (an online store class and a provider named in the repo
config), keeps one row per entity in a `WITHOUT ROWID` table: its serialized key, its feature
values in one message (mlops_resources/feast_value_encoding.py), and its event and created
times in microseconds since the epoch (UTC). `write_to_online_store` encodes whole columns;
`materialize` and frames the encoder leaves alone go through `online_write_batch`, row by row.
Reads are Feast's `get_online_features`, through `online_read`. An entity's row holds its last
write, whatever its timestamp (as Feast's sqlite store). A database written with Feast's layout
is moved into this one when the view is applied (`update`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.infra.passthrough_provider import PassthroughProvider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import _run_pyarrow_field_mapping, to_naive_utc

from mlops_resources.feast_value_encoding import entity_keys, epoch_micros, feature_fields

ENTITY_ROW_STORE = f"{__name__}.EntityRowSqliteOnlineStore"
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
KEYS_PER_READ = 10_000  # sqlite binds at most 32,766 parameters in one statement

Row = tuple[bytes, bytes, int, int | None]  # entity key, features, event_ts, created_ts


class EntityRowSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's sqlite online store config (`path` as sqlite's), for EntityRowSqliteOnlineStore."""

    type: Literal["mlops_resources.feast_entity_rows.EntityRowSqliteOnlineStore"] = (  # type: ignore[assignment]
        ENTITY_ROW_STORE
    )


def entity_row_table(config: RepoConfig, view: FeatureView) -> str:
    """The view's table of entity rows (Feast's own table name, suffixed)."""
    versioned = config.registry.enable_online_feature_view_versioning
    return _table_id(config.project, view, versioned) + "__entity_rows"


def micros(moment: datetime | None) -> int | None:
    """Microseconds since the epoch of a Feast timestamp (naive means UTC)."""
    return None if moment is None else (to_naive_utc(moment) - EPOCH) // MICROSECOND


class EntityRowSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SqliteOnlineStore (same file, connection and teardown) with one row per entity."""

    def plan(self, config: RepoConfig, desired_registry_proto: Any) -> list:
        """No Feast-layout tables: `update` makes this store's own."""
        return OnlineStore.plan(self, config, desired_registry_proto)

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create the kept views' tables (moving rows of Feast's layout in), drop the others."""
        conn = self._get_conn(config)
        versioned = config.registry.enable_online_feature_view_versioning
        with conn:
            for view in tables_to_keep:
                table = _quote_id(entity_row_table(config, view))
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (entity_key BLOB PRIMARY KEY, "
                    "features BLOB NOT NULL, event_ts INTEGER NOT NULL, created_ts INTEGER) "
                    "WITHOUT ROWID"
                )
                self.move_feast_rows(conn, _table_id(config.project, view, versioned), table)
            for view in tables_to_delete:
                conn.execute(f"DROP TABLE IF EXISTS {_quote_id(entity_row_table(config, view))}")
                conn.execute(
                    f"DROP TABLE IF EXISTS {_quote_id(_table_id(config.project, view, versioned))}"
                )

    @staticmethod
    def move_feast_rows(conn: Any, feast_table: str, table: str) -> None:
        """Rows a store of Feast's layout holds for the view go into `table` (rows already
        there are newer and stay), then Feast's table is dropped."""
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (feast_table,)
        ).fetchone()
        if not found:
            return
        cursor = conn.execute(
            "SELECT entity_key, feature_name, value, event_ts, created_ts FROM "
            f"{_quote_id(feast_table)} ORDER BY entity_key"
        )
        rows = []
        for key, group in itertools.groupby(cursor, key=lambda r: r[0]):
            features = list(group)
            names = [f[1] for f in features]
            values = [ValueProto.FromString(f[2]) for f in features]
            message = EntityKeyProto(join_keys=names, entity_values=values).SerializeToString()
            rows.append((key, message, micros(features[-1][3]), micros(features[-1][4])))
        conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?, ?)", rows)
        conn.execute(f"DROP TABLE {_quote_id(feast_table)}")

    def write_rows(self, config: RepoConfig, view: FeatureView, rows: Iterable[Row]) -> None:
        """Upsert entity rows in one transaction."""
        conn = self._get_conn(config)
        with conn:
            conn.executemany(
                f"INSERT INTO {_quote_id(entity_row_table(config, view))} VALUES (?, ?, ?, ?) "
                "ON CONFLICT(entity_key) DO UPDATE SET features = excluded.features, "
                "event_ts = excluded.event_ts, created_ts = excluded.created_ts",
                rows,
            )

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's row-by-row write (materialize, and frames `write_frame` leaves alone)."""
        version = config.entity_key_serialization_version
        rows = [
            (
                serialize_entity_key(key, entity_key_serialization_version=version),
                EntityKeyProto(
                    join_keys=list(values), entity_values=list(values.values())
                ).SerializeToString(),
                micros(event_ts),
                micros(created_ts),
            )
            for key, values, event_ts, created_ts in data
        ]
        self.write_rows(config, table, rows)
        if progress:
            progress(len(rows))

    def write_frame(self, config: RepoConfig, view: FeatureView, df: pd.DataFrame) -> bool:
        """Upsert `df`'s rows with whole columns encoded at once, entities in key order (stable:
        a key's later rows still win); False (nothing written) when Feast's conversion is
        needed."""
        encoded = encode_entity_rows(config, view, df)
        if encoded is None:
            return False
        keys, messages, event_ts, created_ts = encoded
        order = np.argsort(np.array(keys, dtype=bytes), kind="stable").tolist()
        rows = list(zip(keys, messages, event_ts, created_ts, strict=True))
        self.write_rows(config, view, map(rows.__getitem__, order))
        return True

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """Each entity's event time and values (of `requested_features` if given), or
        (None, None) for an entity without a row."""
        version = config.entity_key_serialization_version
        keys = [
            serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys
        ]
        name = _quote_id(entity_row_table(config, table))
        conn = self._get_conn(config)
        found = {}
        for start in range(0, len(keys), KEYS_PER_READ):
            chunk = keys[start : start + KEYS_PER_READ]
            found.update(
                (key, (features, event_ts))
                for key, features, event_ts in conn.execute(
                    f"SELECT entity_key, features, event_ts FROM {name} "
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        wanted = set(requested_features) if requested_features else None
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            if key not in found:
                result.append((None, None))
                continue
            features, event_ts = found[key]
            message = EntityKeyProto.FromString(features)
            values = dict(zip(message.join_keys, message.entity_values, strict=True))
            if wanted is not None:
                values = {n: v for n, v in values.items() if n in wanted}
            moment = (EPOCH + event_ts * MICROSECOND).replace(tzinfo=UTC)
            result.append((moment, values))
        return result


class EntityRowProvider(PassthroughProvider):
    """Feast's local provider; `ingest_df` (behind `write_to_online_store`) writes through
    EntityRowSqliteOnlineStore.write_frame when it can, else Feast's stock path."""

    def ingest_df(self, feature_view: Any, df: pd.DataFrame, field_mapping: Any = None) -> None:
        store = self.online_store
        if type(feature_view) is FeatureView and isinstance(store, EntityRowSqliteOnlineStore):
            if store.write_frame(self.repo_config, feature_view, df):
                return
        super().ingest_df(feature_view, df, field_mapping)


def encode_entity_rows(
    config: RepoConfig, view: FeatureView, df: pd.DataFrame
) -> tuple[list[bytes], list[bytes], list[int], list[Any]] | None:
    """Entity keys, feature messages, event and created microseconds of each row of `df`;
    None when a key, value or timestamp column needs Feast's own conversion."""
    if (
        config.entity_key_serialization_version != 3
        or config.online_store.vector_enabled
        or getattr(config.online_store, "enable_openai_compatible_store", False)
        or view.batch_source is None
        or not view.features
        or df.empty
    ):
        return None
    table = pa.Table.from_pandas(df)  # as Feast's provider does
    if view.batch_source.field_mapping:
        table = _run_pyarrow_field_mapping(table, view.batch_source.field_mapping)
    batch = table.combine_chunks().to_batches()[0]
    keys = entity_keys({c.name: c.dtype.to_value_type() for c in view.entity_columns}, batch)
    event_ts = epoch_micros(batch, view.batch_source.timestamp_field)
    created_field = view.batch_source.created_timestamp_column
    created_ts = epoch_micros(batch, created_field) if created_field else [None] * len(batch)
    if keys is None or event_ts is None or created_ts is None:
        return None
    columns = []
    for field in view.features:
        fields = feature_fields(batch, field.name, field.dtype.to_value_type())
        if fields is None:
            return None
        columns.append(fields)
    messages = [b"".join(parts) for parts in zip(*columns, strict=True)]
    return keys, messages, event_ts, created_ts
