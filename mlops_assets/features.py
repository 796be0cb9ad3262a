"""Feature stage: Feast entity and feature view from the spec, online materialization, and the
point-in-time correct training_set."""

from datetime import timedelta
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    TimeWindowPartitionMapping,
    asset,
)

from mlops_assets.data import (
    content_hash,
    daily_partitions,
    day_bounds,
    partition_day,
    table_schema,
)
from mlops_assets.frames import Frame
from mlops_assets.spec import PipelineSpec
from mlops_resources.feast_store import FeastResource

SPLIT_COLUMN = "split"


def feature_view_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_features"


def feature_refs(spec: PipelineSpec) -> list[str]:
    """Feast feature references ("view:feature") for every spec feature."""
    return [f"{feature_view_name(spec)}:{name}" for name in spec.feature_names]


def feast_definitions(spec: PipelineSpec, feast: FeastResource) -> list[Any]:
    """Entity and feature view derived from the spec, reading the offline Parquet folder."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    entity = Entity(name=spec.entity_key, join_keys=[spec.entity_key], value_type=ValueType.STRING)
    source = FileSource(
        name=f"{spec.name}_source",
        path=str(offline_folder(spec, feast)),
        timestamp_field=spec.timestamp,
    )
    view = FeatureView(
        name=feature_view_name(spec),
        entities=[entity],
        ttl=timedelta(days=spec.feature_ttl_days),
        schema=[
            Field(name=f.name, dtype=Float64 if f.type == "numeric" else String)
            for f in spec.features
        ],
        source=source,
        online=True,
        description=spec.description,
    )
    return [entity, view]


def offline_folder(spec: PipelineSpec, feast: FeastResource):
    return feast.offline_data_dir / spec.name


def write_offline_partition(spec: PipelineSpec, feast: FeastResource, day, df: Frame):
    """Write one day's feature rows (with the label) atomically; re-runs replace the day."""
    folder = offline_folder(spec, feast)
    folder.mkdir(parents=True, exist_ok=True)
    columns = [spec.entity_key, spec.timestamp, *spec.feature_names, spec.label]
    path = folder / f"{day.isoformat()}.parquet"
    tmp = folder / f".{day.isoformat()}.parquet.tmp"
    df[columns].to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def build_features(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        name="features",
        partitions_def=daily_partitions(spec),
        group_name="features",
        description="Feast feature view for the spec's features: the day's rows in the offline "
        "store and materialized to the online store.",
        kinds={"feast"},
    )
    def features(
        context: AssetExecutionContext, feast: FeastResource, validated_data: Frame
    ) -> Output[None]:
        day = partition_day(context.partition_key)
        path = write_offline_partition(spec, feast, day, validated_data)
        feast.apply(feast_definitions(spec, feast))
        start, end = day_bounds(day)
        feast.materialize(start, end, [feature_view_name(spec)])
        context.log.info(f"materialized {len(validated_data)} rows of {day} to the online store")
        return Output(
            None,
            data_version=DataVersion(content_hash(validated_data)),
            metadata={
                "feature_view": feature_view_name(spec),
                "features": MetadataValue.json(spec.feature_names),
                "rows_materialized": len(validated_data),
                "offline_file": MetadataValue.path(str(path)),
                "entities": int(validated_data[spec.entity_key].nunique()),
            },
        )

    return features


def window_days(spec: PipelineSpec, partition_key: str):
    day = partition_day(partition_key)
    return [day - timedelta(days=i) for i in range(spec.model.training_window_days - 1, -1, -1)]


def build_training_set(spec: PipelineSpec) -> AssetsDefinition:
    window = spec.model.training_window_days

    @asset(
        name="training_set",
        partitions_def=daily_partitions(spec),
        group_name="features",
        deps=[
            AssetDep(
                "features",
                partition_mapping=TimeWindowPartitionMapping(
                    start_offset=-(window - 1), allow_nonexistent_upstream_partitions=True
                ),
            )
        ],
        description=f"Labelled rows of the {window} days up to the partition, features joined "
        f"point-in-time from Feast; the last {spec.model.holdout_days} days are the holdout.",
        kinds={"feast", "pandas"},
    )
    def training_set(context: AssetExecutionContext, feast: FeastResource) -> Output[Frame]:
        folder = offline_folder(spec, feast)
        days = window_days(spec, context.partition_key)
        present = [d for d in days if (folder / f"{d.isoformat()}.parquet").exists()]
        missing = [d.isoformat() for d in days if d not in present]
        holdout_start = days[-1] - timedelta(days=spec.model.holdout_days - 1)
        if not any(d < holdout_start for d in present) or not any(
            d >= holdout_start for d in present
        ):
            raise Failure(
                f"training_set {context.partition_key}: need feature data before and inside the "
                f"{spec.model.holdout_days}-day holdout; days present: "
                f"{[d.isoformat() for d in present]}. "
                "Materialize `features` for earlier days first."
            )
        import pandas as pd

        labels = pd.concat(
            [
                pd.read_parquet(
                    folder / f"{d.isoformat()}.parquet",
                    columns=[spec.entity_key, spec.timestamp, spec.label],
                )
                for d in present
            ],
            ignore_index=True,
        )
        context.log.info(f"joining features point-in-time for {len(labels)} labelled rows")
        df = feast.historical_features(labels, feature_refs(spec))
        df = df.sort_values([spec.timestamp, spec.entity_key]).reset_index(drop=True)
        holdout_from, _ = day_bounds(holdout_start)
        df[SPLIT_COLUMN] = (df[spec.timestamp] >= holdout_from).map(
            {True: "holdout", False: "train"}
        )
        version = content_hash(df)
        counts = df[SPLIT_COLUMN].value_counts().to_dict()
        return Output(
            df,
            data_version=DataVersion(version),
            metadata={
                "dagster/row_count": len(df),
                "dagster/column_schema": table_schema(df),
                "content_hash": version,
                "train_rows": int(counts.get("train", 0)),
                "holdout_rows": int(counts.get("holdout", 0)),
                "days_used": MetadataValue.json([d.isoformat() for d in present]),
                "days_missing": MetadataValue.json(missing),
                "holdout_from": holdout_start.isoformat(),
            },
        )

    return training_set
