"""Feast: feature registry, offline (point-in-time) reads and the online store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from mlops_resources.storage import disable_telemetry, mlops_home

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore


class MissingFeatureRows(ValueError):
    """Entity rows whose keys have no feature rows at all in a feature view's offline source."""


class FeastResource(ConfigurableResource):
    """A Feast FeatureStore built from these fields (no feature_store.yaml needed).

    Defaults: a file registry, the file offline store and a sqlite online store under
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
        default_factory=lambda: {"type": "file"}, description="Feast offline_store config."
    )
    online_store_password: str = Field(
        default="",
        description="Password added to a redis online store's connection_string (pass an "
        "EnvVar: it is never written to config or logs).",
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
            config = RepoConfig(
                project=self.project,
                provider="local",
                registry=self.registry_path or str(self.root / "registry.db"),
                online_store=self.online_store_config(),
                offline_store=self.offline_store,
                entity_key_serialization_version=3,
                repo_path=str(self.root),
            )
            self._store = FeatureStore(config=config)
        return self._store

    def online_store_config(self) -> dict[str, Any]:
        """The Feast online_store config, with the password merged in for Redis."""
        config = dict(self.online_store) or {"type": "sqlite", "path": str(self.root / "online.db")}
        if self.online_store_password and config.get("type") == "redis":
            address = config.get("connection_string", "localhost:6379")
            config["connection_string"] = f"{address},password={self.online_store_password}"
        return config

    def apply(self, objects: list[Any]) -> None:
        """Register entities and feature views (idempotent)."""
        self.store().apply(objects)

    def materialize(self, start: datetime, end: datetime, feature_views: list[str]) -> None:
        """Load the offline rows with event time in [start, end) into the online store."""
        self.store().materialize(start_date=start, end_date=end, feature_views=feature_views)

    def historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """Point-in-time correct join of `features` onto entity rows (key + event_timestamp).

        Every entity key needs feature rows in the offline store. Once a source holds several
        files, Feast's file offline store (dask) fails to sort a join in which some key has
        none; that raises MissingFeatureRows naming the source, the key column and the keys.
        """
        job = self.store().get_historical_features(entity_df=entity_df, features=features)
        try:
            return job.to_df()
        except NotImplementedError as exc:  # dask: "Divisions calculation failed ..."
            missing = self.missing_feature_rows(entity_df, features)
            if missing is None:
                raise
            raise missing from exc

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

    def online_features(
        self, entity_rows: list[dict[str, Any]], features: list[str]
    ) -> pd.DataFrame:
        """Latest feature values for entities from the online store."""
        response = self.store().get_online_features(features=features, entity_rows=entity_rows)
        return response.to_df()
