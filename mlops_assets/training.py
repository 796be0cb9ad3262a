"""Training stage: candidate_model trains on training_set, logs an MLflow run and registers a
version; a blocking check loads it back from the registry and predicts."""

import math
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MetadataValue,
    Output,
    asset,
)

from mlops_assets.data import partitioned
from mlops_assets.frames import Frame
from mlops_assets.governance import governance_metadata, log_governance, publish_model_card
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    ALARM_VERSION_TAG,
    CHANGE_DAY_VERSION_TAG,
    KIND_TAG,
    LABEL_CUTOFF_TAG,
    PARTITION_TAG,
    REFERENCE_TAG,
    RUN_ID_TAG,
    TRIGGER_TAG,
    TRIGGER_VERSION_TAG,
    WINDOW_POLICY_TAG,
    Meta,
    asset_ins,
    asset_key,
)
from mlops_assets.ml.dataset import content_hash, mlflow_dataset, split, train_weights
from mlops_assets.ml.evaluation import model_output, monitored_output, output_metrics
from mlops_assets.ml.governance.lineage import lineage_tags
from mlops_assets.ml.model_kinds import log_model, model_kind, train_model
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec
from mlops_resources.mlflow_tracking import MLFLOW_RETRY_POLICY, MLflowResource
from mlops_resources.model_loading import load_registered_model
from mlops_resources.storage import mlops_home
from mlops_resources.torch_executor import TorchExecutorResource

LOAD_CHECK = "loads_and_predicts"
REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.parquet"

if TYPE_CHECKING:
    import numpy as np


def log_reference(
    model: Any, spec: PipelineSpec, X_train: Frame, weights: "np.ndarray | None"
) -> None:
    """Record the drift reference with the model: a seeded sample of its training rows (drawn
    by their training weights, so a recency-weighted model's reference is recent too) and its
    output on them, as an artifact of the active MLflow run."""
    import tempfile
    from pathlib import Path

    import mlflow as mlflow_api

    size = min(len(X_train), spec.monitoring.drift.reference_size)
    sample = X_train.sample(n=size, random_state=spec.model.seed, weights=weights)
    reference = sample.assign(**{PREDICTION_COLUMN: monitored_output(model, sample, spec)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / REFERENCE_FILE
        reference.to_parquet(path, index=False)
        mlflow_api.log_artifact(str(path), artifact_path=REFERENCE_ARTIFACT_DIR)


def window_tags(context: AssetExecutionContext, spec: PipelineSpec) -> dict[str, str]:
    """What the version learned from: the training_set's window policy, change day and label
    cutoff, the days of its drift reference, and the alarm that launched the retraining."""
    from dagster import AssetRecordsFilter

    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=asset_key(spec, "training_set"), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    # training_set may come from elsewhere (materialize() with a given input): then unknown
    metadata = records[0].asset_materialization.metadata if records else {}
    meta = {k: v.value for k, v in metadata.items()}
    return {
        WINDOW_POLICY_TAG: str(meta.get(Meta.WINDOW_POLICY, "unknown")),
        CHANGE_DAY_VERSION_TAG: str(meta.get(Meta.CHANGE_DAY, "none")),
        LABEL_CUTOFF_TAG: str(meta.get(Meta.LABEL_CUTOFF, "unknown")),
        REFERENCE_TAG: f"train rows of {', '.join(meta.get(Meta.DAYS_USED) or [])}",
        TRIGGER_VERSION_TAG: context.run.tags.get(TRIGGER_TAG, "manual"),
        ALARM_VERSION_TAG: context.run.tags.get(ALARM_PARTITION_TAG, "none"),
    }


def build_candidate_model(spec: PipelineSpec) -> AssetsDefinition:
    kind = model_kind(spec)

    @asset(
        **partitioned(spec, "candidate_model"),
        ins=asset_ins(spec, "training_set"),
        description=f"A {spec.model.kind} model trained on training_set, logged to MLflow and "
        f"registered as a new version of {spec.model_name}.",
        check_specs=[
            AssetCheckSpec(
                LOAD_CHECK,
                asset=asset_key(spec, "candidate_model"),
                blocking=True,
                description="The registered version loads from the registry and "
                "predicts on holdout rows.",
            )
        ],
        kinds={"mlflow", kind.asset_kind},
        retry_policy=MLFLOW_RETRY_POLICY,
        op_tags=kind.op_tags(),
    )
    def candidate_model(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        torch_executor: TorchExecutorResource,
        training_set: Frame,
    ):
        import mlflow as mlflow_api

        X_train, _ = split(training_set, spec, "train")
        X_hold, y_hold = split(training_set, spec, "holdout")
        with mlflow.start_run(
            run_name=f"{spec.name}-{context.partition_key}",
            tags={"dagster.run_id": context.run.run_id, "dagster.partition": context.partition_key},
        ) as run:
            model = train_model(
                spec,
                training_set,
                torch_executor,
                checkpoint_dir=mlops_home() / "checkpoints" / spec.name / context.partition_key,
                log=context.log,
                log_metric=lambda name, value, step: mlflow_api.log_metric(name, value, step=step),
                pipes_context=context,
            )
            # the holdout is scored once: for the metrics and the governance report
            holdout_output = model_output(model, X_hold, spec)
            metrics = output_metrics(*holdout_output, y_hold, spec)
            context.log.info(f"holdout metrics: {metrics}")
            device = kind.device_info(torch_executor)
            mlflow_api.log_params(device)
            mlflow_api.log_params(
                {
                    "model_kind": spec.model.kind,
                    "partition": context.partition_key,
                    "train_rows": len(X_train),
                    "holdout_rows": len(X_hold),
                    "training_window_days": spec.model.training_window_days,
                    "seed": spec.model.seed,
                    **spec.model.params,
                }
            )
            mlflow_api.log_metrics(
                {f"{Meta.HOLDOUT_PREFIX}{k}": v for k, v in metrics.items() if not math.isnan(v)}
            )
            # The content hash (the DataVersion) is the dataset's digest: exact, computed once.
            # MLflow's own digest maps `type` over every cell (33 s on 800k rows).
            version_of_data = content_hash(training_set)
            dataset = mlflow_dataset(
                training_set, f"{spec.name}_training_set", spec.label, version_of_data
            )
            mlflow_api.log_input(dataset, context="training")
            info = log_model(model, spec, X_train.head(50))
            log_reference(model, spec, X_train, train_weights(training_set))
            report = log_governance(
                context,
                spec,
                training_set,
                holdout_output,
                kind.settings_record(torch_executor),
                training_version=version_of_data,
            )
        version = str(info.registered_model_version)
        mlflow.tag_version(
            spec.model_name,
            version,
            {
                KIND_TAG: spec.model.kind,
                PARTITION_TAG: context.partition_key,
                RUN_ID_TAG: context.run.run_id,
                **window_tags(context, spec),
                **lineage_tags(report),
            },
        )
        reloaded = load_registered_model(spec.model_name, version)
        sample = X_hold.head(20)
        predictions = reloaded.predict(sample)
        loads = len(predictions) == len(sample)
        candidate = {
            "name": spec.model_name,
            "version": version,
            "run_id": run.info.run_id,
            "model_uri": f"models:/{spec.model_name}/{version}",
            "metrics": metrics,
            "kind": spec.model.kind,
            "governance": report,
        }
        card = publish_model_card(mlflow, spec, candidate)
        yield Output(
            candidate,
            metadata={
                Meta.MODEL_VERSION: version,
                Meta.MLFLOW_RUN: MetadataValue.url(mlflow.run_url(run.info.run_id)),
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, version)
                ),
                "mlflow_run_id": run.info.run_id,
                **({"device": MetadataValue.json(device)} if device else {}),
                **{f"{Meta.HOLDOUT_PREFIX}{k}": v for k, v in metrics.items()},
                **governance_metadata(report, card),
            },
        )
        yield AssetCheckResult(
            check_name=LOAD_CHECK,
            passed=loads,
            metadata={"rows_predicted": len(predictions), "model_uri": info.model_uri},
        )

    return candidate_model
