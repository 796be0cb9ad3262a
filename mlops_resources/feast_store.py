"""Feast: feature registry, offline (point-in-time) reads and the online store.

Several runs may use one store at once (the daemon's queue, a CLI beside `dagster dev`), so:

- registry writers (`apply`, `materialize`) hold an inter-process lock, a `flock` on
  `<repo>/registry.lock` that the OS releases when its holder dies, and re-read the registry
  under it, so no writer overwrites another's change with a stale copy;
- the local registry file is replaced atomically (AtomicFileRegistryStore), so a reader never
  parses a half-written file and a kill mid-write leaves the previous registry;
- reads do not depend on a view's materialization state: a view in `MATERIALIZING` serves its
  last-materialized values (Feast's `serve_features_while_materializing`), and a view left in
  `MATERIALIZING` by a killed writer is put back to a servable state by the next `materialize`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from mlops_resources.storage import disable_telemetry, mlops_home

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore


def newest_per_entity(df: pd.DataFrame, keys: list[str], timestamp: str) -> pd.DataFrame:
    """The newest row of each entity (of equal times, the later row), in key order: what a
    stable sort by time, `drop_duplicates(keys, keep="last")` and a sort by key give, sorted by
    Arrow (pandas factorizes text keys to sort them: 1.4 s against 0.3 s for 1,000,000 rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({c: pa.Array.from_pandas(df[c]) for c in [*keys, timestamp]})
    order = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in [*keys, timestamp]])
    rows = df.take(order.to_numpy())
    if rows.empty:
        return rows
    changed = np.zeros(len(rows) - 1, dtype=bool)  # row i's keys differ from row i + 1's
    for key in keys:
        values = rows[key].to_numpy()
        changed |= values[1:] != values[:-1]
    return rows[np.append(changed, True)]  # the last row of each entity


class MissingFeatureRows(ValueError):
    """Entity rows whose keys have no feature rows at all in a feature view's offline source."""


REGISTRY_STORE = f"{__name__}.AtomicFileRegistryStore"
# mlops_resources/feast_entity_rows.py, named here so that importing this module loads no feast
ENTITY_ROW_STORE = "mlops_resources.feast_entity_rows.EntityRowSqliteOnlineStore"
ENTITY_ROW_PROVIDER = "mlops_resources.feast_entity_rows.EntityRowProvider"
# Feast warns that the flag "typically has no effect" on a file registry; it does: the file
# registry's reads honour it (tests/test_feast_concurrency.py).
SERVE_WHILE_MATERIALIZING_WARNING = "`serve_features_while_materializing` is enabled but"


def drop_serve_while_materializing_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(SERVE_WHILE_MATERIALIZING_WARNING)


def __getattr__(name: str) -> Any:
    """AtomicFileRegistryStore is built on first use, so importing this module loads no feast."""
    if name == "AtomicFileRegistryStore":
        return atomic_file_registry_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def atomic_file_registry_store() -> type:
    """Feast's FileRegistryStore, writing a temporary file and renaming it over the registry
    (Feast truncates and rewrites the registry in place)."""
    from feast.infra.registry.file import FileRegistryStore
    from feast.utils import _utc_now

    class AtomicFileRegistryStore(FileRegistryStore):
        def _write_registry(self, registry_proto: Any) -> None:
            registry_proto.version_id = str(uuid.uuid4())
            registry_proto.last_updated.FromDatetime(_utc_now())
            path = Path(self._filepath)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(registry_proto.SerializeToString())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    AtomicFileRegistryStore.__module__ = __name__
    AtomicFileRegistryStore.__qualname__ = "AtomicFileRegistryStore"
    return AtomicFileRegistryStore


class FeastResource(ConfigurableResource):
    """A Feast FeatureStore built from these fields (no feature_store.yaml needed).

    Defaults: a file registry, Feast's DuckDB offline store (point-in-time joins 2-3x faster
    than the file/dask store, docs/performance.md) and a sqlite online store under
    $MLOPS_HOME/feast. For Redis, set online_store to {type: redis, connection_string:
    "host:port"} and online_store_password to an EnvVar, so the password stays out of config.
    """

    project: str = Field(default="mlops_suite", description="Feast project name.")
    repo_path: str = Field(
        default="",
        description="Folder for the registry, data and online store; default $MLOPS_HOME/feast.",
    )
    registry_path: str = Field(default="", description="Registry file; default <repo>/registry.db.")
    online_store: dict[str, Any] = Field(
        default_factory=dict,
        description="Feast online_store config; default {type: sqlite, path: <repo>/online.db}.",
    )
    offline_store: dict[str, Any] = Field(
        default_factory=lambda: {"type": "duckdb"},
        description="Feast offline_store config; {type: file} is Feast's dask store.",
    )
    online_store_password: str = Field(
        default="",
        description="Password added to a redis online store's connection_string (pass an "
        "EnvVar: it is never written to config or logs).",
    )
    online_write_batch_rows: int = Field(
        default=100_000,
        ge=1,
        description="Rows per write_to_online_store call when a day is written to the online "
        "store (bounds the memory of Feast's row conversion).",
    )
    online_bulk_write: bool = Field(
        default=True,
        description="With a sqlite online store: one row per entity, whole columns encoded at "
        "once by write_to_online_store (mlops_resources/feast_entity_rows.py; a store of "
        "Feast's layout is moved in on apply). false: Feast's stock sqlite store.",
    )
    registry_lock_timeout_seconds: float = Field(
        default=3600.0,
        description="How long `apply` and `materialize` wait for another process's registry "
        "write (the lock <repo>/registry.lock) before failing.",
    )

    _store: Any = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return Path(self.repo_path) if self.repo_path else mlops_home() / "feast"

    @property
    def offline_data_dir(self) -> Path:
        """Where feature assets write the Parquet files that Feast's FileSources read."""
        return self.root / "offline"

    def store(self) -> FeatureStore:
        if self._store is None:
            disable_telemetry()
            from feast import FeatureStore, RepoConfig

            self.root.mkdir(parents=True, exist_ok=True)
            logging.getLogger("feast.repo_config").addFilter(drop_serve_while_materializing_warning)
            online_store = self.feast_online_store_config()
            entity_rows = online_store.get("type") == ENTITY_ROW_STORE
            config = RepoConfig(
                project=self.project,
                provider=ENTITY_ROW_PROVIDER if entity_rows else "local",
                registry=self.registry_config(),
                online_store=online_store,
                offline_store=self.offline_store,
                entity_key_serialization_version=3,
                repo_path=str(self.root),
            )
            self._store = FeatureStore(config=config)
        return self._store

    def registry_config(self) -> dict[str, Any]:
        """Feast's registry config: reads never fail on a view's MATERIALIZING state, and a
        local registry file is written atomically."""
        path = self.registry_path or str(self.root / "registry.db")
        config: dict[str, Any] = {"path": path, "serve_features_while_materializing": True}
        if "://" not in path:
            config["registry_store_type"] = REGISTRY_STORE
        return config

    @contextlib.contextmanager
    def registry_lock(self) -> Iterator[None]:
        """Hold the inter-process lock of registry writers, with the registry re-read under it.

        A `flock` on <repo>/registry.lock: the OS releases it when the holder exits or is
        killed. It serializes the processes of one machine (or of a file system with working
        locks); across machines use a Dagster pool limit on `features` (docs/deployment.md).
        """
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "registry.lock"
        deadline = time.monotonic() + self.registry_lock_timeout_seconds
        with open(path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"Feast registry lock {path} still held by another process after "
                            f"{self.registry_lock_timeout_seconds:.0f} s "
                            "(registry_lock_timeout_seconds)"
                        ) from None
                    time.sleep(0.2)
            try:
                self.store().refresh_registry()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def online_store_config(self) -> dict[str, Any]:
        """The Feast online_store config, with the password merged in for Redis."""
        config = dict(self.online_store) or {"type": "sqlite", "path": str(self.root / "online.db")}
        if self.online_store_password and config.get("type") == "redis":
            address = config.get("connection_string", "localhost:6379")
            config["connection_string"] = f"{address},password={self.online_store_password}"
        return config

    def feast_online_store_config(self) -> dict[str, Any]:
        """online_store_config as the FeatureStore gets it: a sqlite store becomes Feast's
        sqlite store of entity rows (ENTITY_ROW_STORE) unless online_bulk_write is off."""
        config = self.online_store_config()
        if self.online_bulk_write and config.get("type") == "sqlite":
            config["type"] = ENTITY_ROW_STORE
        return config

    def apply(self, objects: list[Any]) -> None:
        """Register entities and feature views (idempotent)."""
        with self.registry_lock():
            self.store().apply(objects)

    def materialize(self, start: datetime, end: datetime, feature_views: list[str]) -> list[str]:
        """Load the offline rows with event time in [start, end) into the online store.

        Returns the views that a killed writer had left in MATERIALIZING and that were put back
        to a servable state first (so a failure now restores that state, not Feast's
        GENERATED, which would stop reads).
        """
        with self.registry_lock():
            recovered = self.recover_views(feature_views)
            self.store().materialize(start_date=start, end_date=end, feature_views=feature_views)
        return recovered

    def recover_views(self, names: list[str]) -> list[str]:
        """Views in MATERIALIZING (or GENERATED, Feast's state after a failed materialization
        of one) while this process holds the registry lock: their writer died. They go back
        to AVAILABLE_ONLINE (materialized before) or to no state (never materialized)."""
        from feast.feature_view import FeatureViewState

        stuck = {FeatureViewState.MATERIALIZING, FeatureViewState.GENERATED}
        store = self.store()
        recovered = []
        for view in store.list_feature_views():
            if view.name in names and getattr(view, "state", None) in stuck:
                view.state = (
                    FeatureViewState.AVAILABLE_ONLINE
                    if view.materialization_intervals
                    else FeatureViewState.STATE_UNSPECIFIED
                )
                store.registry.apply_feature_view(view, store.project, commit=True)
                recovered.append(view.name)
        return recovered

    def historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """Point-in-time correct join of `features` onto entity rows (key + event_timestamp).

        Every entity key needs feature rows in the offline store, or MissingFeatureRows names
        the source, the key column and the keys: Feast's file (dask) store fails to sort such a
        join once a source holds several files, and its DuckDB store returns nulls for them;
        both become the same error. Timestamps come back as the entity rows gave them.
        """
        job = self.store().get_historical_features(entity_df=entity_df, features=features)
        try:
            df = job.to_df()
        except NotImplementedError as exc:  # dask: "Divisions calculation failed ..."
            missing = self.missing_feature_rows(entity_df, features)
            if missing is None:
                raise
            raise missing from exc
        names = [ref.split(":")[1] for ref in features]
        if len(df) and df[names].isna().all(axis=1).any():
            missing = self.missing_feature_rows(entity_df, features)
            if missing is not None:
                raise missing
        for column, dtype in entity_df.dtypes.items():
            if column in df and df[column].dtype != dtype and str(dtype).startswith("datetime"):
                df[column] = df[column].astype(dtype)
        return df

    def missing_feature_rows(
        self, entity_df: pd.DataFrame, features: list[str]
    ) -> MissingFeatureRows | None:
        """The error for the first feature view whose offline source lacks some entity keys."""
        import pandas as pd

        store = self.store()
        for view_name in dict.fromkeys(ref.split(":")[0] for ref in features):
            view = store.get_feature_view(view_name)
            keys = [column.name for column in view.entity_columns]
            path = view.batch_source.path
            known = pd.MultiIndex.from_frame(pd.read_parquet(path, columns=keys).astype(str))
            wanted = entity_df[keys].astype(str)
            absent = wanted[~pd.MultiIndex.from_frame(wanted).isin(known)]
            if len(absent):
                examples = absent.drop_duplicates().head(3).to_dict("records")
                return MissingFeatureRows(
                    f"Feast offline source {path}: {len(absent)} of {len(entity_df)} entity rows "
                    f"have no feature rows for key column(s) {keys} (e.g. {examples}). Rule: "
                    f"every entity needs feature rows before a point-in-time join; write the "
                    f"features of their days first (the `features` asset)."
                )
        return None

    def write_online(self, feature_view: str, df: pd.DataFrame, entity_keys: list[str]) -> int:
        """Write the newest row of each entity in `df` to the online store, in batches of
        `online_write_batch_rows`, with Feast's public `write_to_online_store` (`materialize`
        re-reads the offline store first; on sqlite, entity rows: docs/performance.md). The
        newest row per entity is what a materialization of the same rows keeps. Batches go in
        key order, so each touches one key range of a sqlite store's indexes. Returns the rows
        written. The registry is read, not written: no lock is taken."""
        view = self.store().get_feature_view(feature_view)
        timestamp = view.batch_source.timestamp_field
        columns = [*entity_keys, timestamp, *(f.name for f in view.features)]
        latest = newest_per_entity(df[columns], entity_keys, timestamp)
        step = self.online_write_batch_rows
        for start in range(0, len(latest), step):
            self.store().write_to_online_store(feature_view, df=latest.iloc[start : start + step])
        return len(latest)

    def online_features(
        self, entity_rows: list[dict[str, Any]], features: list[str]
    ) -> pd.DataFrame:
        """Latest feature values for entities from the online store."""
        response = self.store().get_online_features(features=features, entity_rows=entity_rows)
        return response.to_df()

    def online_feature_values(
        self, entity_rows: list[dict[str, Any]], features: list[str]
    ) -> dict[str, list[Any]]:
        """Latest feature values as columns: the entity key columns and each feature's name,
        one value per entity row, None where the online store holds none. Feast's dict form,
        without a DataFrame (the online endpoint's per-request path)."""
        response = self.store().get_online_features(features=features, entity_rows=entity_rows)
        return response.to_dict()
