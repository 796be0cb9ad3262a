"""Feature stage: Feast entity and feature view from the spec, the day's rows in the offline
store (`features`), the online store write when the spec asks for it (`online_features`, off
the path of batch_predictions and drift_report), and the point-in-time correct training_set."""

from datetime import date, timedelta
from pathlib import Path
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
    newest_arrived_day,
    partition_day,
    partitioned,
    table_schema,
)
from mlops_assets.frames import ArrowTable, Frame
from mlops_assets.keys import CHANGE_DAY_TAG, Meta, asset_ins, asset_key
from mlops_assets.labels import LabelSourceError, label_row_count, read_labels
from mlops_assets.memory_bound import require_fits
from mlops_assets.ml.dataset import SPLIT_COLUMN, WEIGHT_COLUMN, ordered_rows
from mlops_assets.ml.windows import (
    TrainingWindow,
    choose_window,
    holdout_mask,
    label_cutoff,
    recency_weights,
)
from mlops_assets.spec import PipelineSpec
from mlops_resources.feast_store import FeastResource


def feature_view_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_features"


def feature_refs(spec: PipelineSpec) -> list[str]:
    """Feast feature references ("view:feature") for every spec feature."""
    return [f"{feature_view_name(spec)}:{name}" for name in spec.feature_names]


def feast_definitions(spec: PipelineSpec, feast: FeastResource) -> list[Any]:
    """Entity and feature view derived from the spec, reading the offline Parquet folder."""
    from feast import FileSource
    from feast.data_format import ParquetFormat

    source = FileSource(
        name=f"{spec.name}_source",
        path=str(offline_folder(spec, feast)),
        # Stated, not inferred from the path (a folder): the DuckDB offline store needs it.
        file_format=ParquetFormat(),
        timestamp_field=spec.timestamp,
    )
    return entity_and_view(spec, source)


def entity_and_view(spec: PipelineSpec, source: Any) -> list[Any]:
    """The spec's Feast entity and its feature view over `source` (a Feast data source)."""
    from feast import Entity, FeatureView, Field, ValueType
    from feast.types import Float64, String

    entity = Entity(name=spec.entity_key, join_keys=[spec.entity_key], value_type=ValueType.STRING)
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


def write_offline_partition(
    spec: PipelineSpec, feast: FeastResource, day: date, rows: "Frame | ArrowTable"
) -> Path:
    """Write one day's feature rows (with the label) atomically; re-runs replace the day.
    `rows`: a pandas frame, or an Arrow table (written without a pandas round trip)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = offline_folder(spec, feast)
    folder.mkdir(parents=True, exist_ok=True)
    columns = [spec.entity_key, spec.timestamp, *spec.feature_names]
    if spec.labels is None:  # else the labels are their own source (labels.py)
        columns.append(spec.label)
    path = folder / f"{day.isoformat()}.parquet"
    tmp = folder / f".{day.isoformat()}.parquet.tmp"
    if isinstance(rows, pa.Table):
        table = rows.select(columns)
    else:
        table = pa.Table.from_pandas(rows[columns], preserve_index=False)
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


# The Dagster pool of every step that writes the Feast registry. It has no limit unless the
# instance sets one: on one machine FeastResource's registry lock serializes the writers; where
# steps run on several machines, set `dagster instance concurrency set feast_registry 1`.
FEAST_WRITE_POOL = "feast_registry"


def build_features(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "features"),
        ins=asset_ins(spec, "validated_data"),
        description="Feast feature view for the spec's features: the day's rows in the offline "
        "store (the online store is written by online_features, when the spec asks for it).",
        kinds={"feast"},
        pool=FEAST_WRITE_POOL,
    )
    def features(
        context: AssetExecutionContext, feast: FeastResource, validated_data: ArrowTable
    ) -> Output[None]:
        # validated_data as Arrow: its stored Parquet goes to the offline store without
        # becoming a pandas frame and back (0.5 s of a 1,000,000-row day)
        import pyarrow.compute as pc

        day = partition_day(context.partition_key)
        path = write_offline_partition(spec, feast, day, validated_data)
        feast.apply(feast_definitions(spec, feast))
        rows = validated_data.num_rows
        context.log.info(f"wrote {rows} rows of {day} to the offline store")
        # No data version of its own: Dagster's hash of the code version and validated_data's
        # (itself from raw_data's content hash) identifies the rows without hashing them again.
        return Output(
            None,
            metadata={
                "feature_view": feature_view_name(spec),
                "features": MetadataValue.json(spec.feature_names),
                "rows_written": rows,
                "offline_file": MetadataValue.path(str(path)),
                "entities": pc.count_distinct(validated_data[spec.entity_key]).as_py(),
            },
        )

    return features


def build_online_features(spec: PipelineSpec) -> AssetsDefinition:
    """The day's newest row per entity written to the Feast online store (what the online
    endpoint reads). Only built when the spec sets `online_features: true`; it depends on
    `features` alone, so batch_predictions and drift_report never wait for it, and within a
    run it is the last step to start among those ready (priority -1)."""

    @asset(
        **partitioned(spec, "online_features"),
        deps=[asset_key(spec, "features")],
        description="The day's newest feature values per entity in the Feast online store, "
        "written from the offline file with Feast's write_to_online_store in batches.",
        kinds={"feast"},
        op_tags={"dagster/priority": "-1"},
    )
    def online_features(context: AssetExecutionContext, feast: FeastResource) -> Output[None]:
        import time

        import pandas as pd

        day = partition_day(context.partition_key)
        path = offline_folder(spec, feast) / f"{day.isoformat()}.parquet"
        if not path.is_file():
            raise Failure(f"online_features {day}: {path} is missing; materialize features first")
        columns = [spec.entity_key, spec.timestamp, *spec.feature_names]
        day_rows = pd.read_parquet(path, columns=columns)
        started = time.perf_counter()
        written = feast.write_online(feature_view_name(spec), day_rows, [spec.entity_key])
        seconds = time.perf_counter() - started
        context.log.info(
            f"wrote the newest row of {written} entities ({len(day_rows)} rows) of {day} to the "
            f"online store in {seconds:.1f} s"
        )
        return Output(
            None,
            metadata={
                "feature_view": feature_view_name(spec),
                "rows_in_day": len(day_rows),
                "entities_written": written,
                "online_store": str(feast.online_store_config().get("type", "sqlite")),
                "write_seconds": round(seconds, 3),
                "rows_per_second": round(written / seconds) if seconds > 0 else 0,
            },
        )

    return online_features


def flagged_days(
    context: AssetExecutionContext, spec: PipelineSpec, days: list[date]
) -> list[date]:
    """Days among `days` whose drift_report flagged drift or whose model_performance flagged
    degradation: the evidence of a change."""
    from dagster import AssetRecordsFilter

    flagged = set()
    for key, flag in (("drift_report", Meta.DRIFT_DETECTED), ("model_performance", Meta.DEGRADED)):
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=asset_key(spec, key),
                asset_partitions=[d.isoformat() for d in days],
            ),
            limit=10 * len(days),
        ).records
        for record in records:
            value = record.asset_materialization.metadata.get(flag)
            if value is not None and value.value is True:
                flagged.add(partition_day(record.partition_key))
    return sorted(flagged)


def change_day(context: AssetExecutionContext, spec: PipelineSpec, days: list[date]) -> date | None:
    """The change a retraining adapts to: the run's CHANGE_DAY_TAG (the alarm's day, set by
    the drift sensor), else the first flagged day in the window."""
    tagged = context.run.tags.get(CHANGE_DAY_TAG)
    if tagged:
        return partition_day(tagged)
    flagged = flagged_days(context, spec, days)
    return flagged[0] if flagged else None


def delivered_labels(spec: PipelineSpec, day: date, offline_file: Path) -> Frame:
    """The labelled rows of a delivered day: entity key, timestamp and label, from the day's
    offline file, or from the label source when the spec has one."""
    import pandas as pd

    if spec.labels is not None:
        return read_labels(spec, day)
    return pd.read_parquet(offline_file, columns=[spec.entity_key, spec.timestamp, spec.label])


def window_dep(spec: PipelineSpec) -> AssetDep:
    """training_set's dependency on the `features` days of its training window."""
    return AssetDep(
        asset_key(spec, "features"),
        partition_mapping=TimeWindowPartitionMapping(
            start_offset=-(spec.model.training_window_days - 1),
            allow_nonexistent_upstream_partitions=True,
        ),
    )


def training_output(
    partition_key: str,
    spec: PipelineSpec,
    df: Frame,
    window: TrainingWindow,
    cutoff: date,
    **metadata: Any,
) -> Output[Frame]:
    """The joined rows of a training window, ordered, split (the newest rows are the holdout
    the gate judges on), weighted, versioned by content and described for the UI."""
    df = ordered_rows(df, spec.timestamp, spec.entity_key)
    row_days = df[spec.timestamp].dt.date
    holdout = holdout_mask(spec, row_days, df[spec.timestamp], window.days)
    if holdout.all() or not holdout.any():
        raise Failure(
            f"training_set {partition_key}: need rows both to train on and to hold "
            f"out; {window.reason} gave {len(df)} rows of {[str(d) for d in window.days]}"
        )
    df[SPLIT_COLUMN] = holdout.map({True: "holdout", False: "train"})
    df[WEIGHT_COLUMN] = (
        recency_weights(row_days, cutoff, spec.model.window.half_life_days)
        if window.weighted
        else 1.0
    )
    version = content_hash(df)
    counts = df[SPLIT_COLUMN].value_counts().to_dict()
    judged_on = sorted(str(d) for d in row_days[holdout].unique())
    return Output(
        df,
        data_version=DataVersion(version),
        metadata={
            "dagster/row_count": len(df),
            "dagster/column_schema": table_schema(df),
            "content_hash": version,
            "train_rows": int(counts.get("train", 0)),
            "holdout_rows": int(counts.get("holdout", 0)),
            Meta.LABEL_CUTOFF: cutoff.isoformat(),
            Meta.WINDOW_POLICY: window.policy,
            "window_reason": window.reason,
            Meta.CHANGE_DAY: window.change_day.isoformat() if window.change_day else "none",
            Meta.DAYS_USED: MetadataValue.json([d.isoformat() for d in window.days]),
            "holdout_days": MetadataValue.json(judged_on),
            **metadata,
        },
    )


def build_training_set(spec: PipelineSpec) -> AssetsDefinition:
    size = spec.model.training_window_days
    lag = spec.monitoring.performance.label_delay_days

    @asset(
        **partitioned(spec, "training_set"),
        deps=[window_dep(spec)],
        description=f"Labelled rows whose labels are delivered ({lag} day(s) after their day) "
        f"by the newest arrived day, at most {size} days up to the partition, chosen by the "
        f"'{spec.model.window.policy}' window policy; features joined point-in-time from Feast; "
        "the newest rows are the holdout the gate judges on.",
        kinds={"feast", "pandas"},
    )
    def training_set(context: AssetExecutionContext, feast: FeastResource) -> Output[Frame]:
        import pyarrow.parquet as pq

        folder = offline_folder(spec, feast)
        cutoff = label_cutoff(spec, partition_day(context.partition_key), newest_arrived_day(spec))
        candidates = [cutoff - timedelta(days=i) for i in range(size - 1, -1, -1)]
        files = {d: folder / f"{d.isoformat()}.parquet" for d in candidates}
        if spec.labels is None:
            rows_by_day = {d: pq.read_metadata(f).num_rows for d, f in files.items() if f.exists()}
        else:  # delivered label files whose day has feature rows
            try:
                counts = {d: label_row_count(spec, d) for d, f in files.items() if f.exists()}
            except LabelSourceError as exc:
                raise Failure(f"training_set {context.partition_key}: {exc}") from None
            rows_by_day = {d: n for d, n in counts.items() if n}
        if not rows_by_day:
            raise Failure(
                f"training_set {context.partition_key}: no feature data with delivered labels "
                f"in {candidates[0]}..{cutoff} (labels arrive {lag} day(s) after their day). "
                "Materialize `features` for earlier days first."
            )
        window = choose_window(spec, cutoff, rows_by_day, change_day(context, spec, candidates))
        require_fits(
            f"the training window's offline files ({window.days[0]}..{window.days[-1]})",
            context.partition_key,
            [files[d] for d in window.days],
        )
        import pandas as pd

        try:
            labels = pd.concat(
                [delivered_labels(spec, d, files[d]) for d in window.days], ignore_index=True
            )
        except LabelSourceError as exc:
            raise Failure(f"training_set {context.partition_key}: {exc}") from None
        context.log.info(
            f"{window.reason}: joining features point-in-time for {len(labels)} labelled rows "
            f"of {window.days[0]}..{window.days[-1]}"
        )
        df = feast.historical_features(labels, feature_refs(spec))
        return training_output(context.partition_key, spec, df, window, cutoff)

    return training_set
