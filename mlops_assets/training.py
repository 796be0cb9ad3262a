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

from mlops_assets.data import daily_partitions
from mlops_assets.features import SPLIT_COLUMN, WEIGHT_COLUMN
from mlops_assets.frames import Frame
from mlops_assets.governance import (
    governance_metadata,
    lineage_tags,
    log_governance,
    publish_model_card,
)
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    ALARM_VERSION_TAG,
    CHANGE_DAY_VERSION_TAG,
    LABEL_CUTOFF_TAG,
    REFERENCE_TAG,
    TRIGGER_TAG,
    TRIGGER_VERSION_TAG,
    WINDOW_POLICY_TAG,
    asset_ins,
    asset_key,
)
from mlops_assets.spec import PREDICTION_COLUMN, PipelineSpec, Task
from mlops_resources.mlflow_tracking import MLFLOW_RETRY_POLICY, MLflowResource
from mlops_resources.model_loading import load_registered_model
from mlops_resources.storage import mlops_home
from mlops_resources.torch_executor import TabularColumns, TorchExecutorResource, k8s_gpu_tags

LOAD_CHECK = "loads_and_predicts"
REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.parquet"
KIND_TAG = "mlops.model_kind"
TORCH_KIND = "torch_mlp"

if TYPE_CHECKING:
    import logging
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from mlops_resources.torch_executor import MetricLogger


def positive_class(spec: PipelineSpec, classes: "np.ndarray") -> Any:
    """The positive class of a binary task: the last of the spec's classes, else the last seen."""
    if spec.classes:
        return spec.classes[-1]
    return classes[-1]


def build_estimator(spec: PipelineSpec) -> Any:
    """A scikit-learn pipeline for the spec's model kind: one-hot categoricals, then the model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f.name for f in spec.features if f.type == "numeric"]
    categorical = [f.name for f in spec.features if f.type == "categorical"]
    classify = spec.is_classification
    seed = {"random_state": spec.model.seed}
    estimators = {
        "hist_gradient_boosting": (
            HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor,
            seed,
        ),
        "random_forest": (
            RandomForestClassifier if classify else RandomForestRegressor,
            {**seed, "n_jobs": 1},
        ),
        "linear": (LogisticRegression, {"max_iter": 1000}) if classify else (Ridge, {}),
    }
    cls, defaults = estimators[spec.model.kind]
    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ]
    )
    pipeline = Pipeline(
        [("preprocess", preprocess), ("model", cls(**{**defaults, **spec.model.params}))]
    )
    calibration = spec.governance.calibration
    if calibration.method == "none":
        return pipeline
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(pipeline, method=calibration.method, cv=calibration.folds)


def evaluate(model: Any, X: Frame, y: "pd.Series", spec: PipelineSpec) -> dict[str, float]:
    """Holdout metrics for the spec's task (the names the gate accepts)."""
    return output_metrics(*model_output(model, X, spec), y, spec)


def model_output(
    model: Any, X: Frame, spec: PipelineSpec
) -> "tuple[np.ndarray, np.ndarray | None]":
    """Class probabilities and the classes (classification), or predictions and None."""
    import numpy as np

    if not spec.is_classification:
        return np.asarray(model.predict(X), dtype=float), None
    return model.predict_proba(X), np.asarray(model.classes_)


def output_metrics(
    output: "np.ndarray", classes: "np.ndarray | None", y: "pd.Series", spec: PipelineSpec
) -> dict[str, float]:
    """The task's metrics from a model's output (see model_output), e.g. for rows of a slice."""
    import numpy as np
    from sklearn import metrics as m

    if classes is None:
        pred = output
        return {
            "rmse": float(math.sqrt(m.mean_squared_error(y, pred))),
            "mae": float(m.mean_absolute_error(y, pred)),
            "r2": float(m.r2_score(y, pred)),
        }
    proba = output
    pred = classes[proba.argmax(axis=1)]
    if spec.task == Task.multiclass_classification:
        return {
            "accuracy": float(m.accuracy_score(y, pred)),
            "f1_macro": float(m.f1_score(y, pred, average="macro")),
            "log_loss": float(m.log_loss(y, proba, labels=classes)),
        }
    positive = positive_class(spec, classes)
    score = proba[:, list(classes).index(positive)]
    truth = (np.asarray(y) == positive).astype(int)
    auc = float(m.roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")
    return {
        "roc_auc": auc,
        "accuracy": float(m.accuracy_score(y, pred)),
        "f1": float(m.f1_score(truth, (pred == positive).astype(int), zero_division=0)),
        "log_loss": float(m.log_loss(y, proba, labels=classes)),
        "brier": float(np.mean((score - truth) ** 2)),
    }


def monitored_output(model: Any, X: Frame, spec: PipelineSpec) -> "np.ndarray":
    """The model output whose drift is watched: the positive-class score for binary tasks,
    the predicted class for multiclass, the prediction for regression."""
    import numpy as np

    if spec.task == Task.binary_classification:
        classes = np.asarray(model.classes_)
        column = list(classes).index(positive_class(spec, classes))
        return model.predict_proba(X)[:, column]
    if spec.task == Task.multiclass_classification:
        return np.asarray(model.predict(X)).astype(str)
    return np.asarray(model.predict(X), dtype=float)


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


def train_weights(training_set: Frame) -> "np.ndarray | None":
    """The train rows' recency weights, or None when every row weighs the same."""
    if WEIGHT_COLUMN not in training_set:
        return None
    weights = training_set.loc[training_set[SPLIT_COLUMN] == "train", WEIGHT_COLUMN].to_numpy()
    return None if (weights == weights[0]).all() else weights


def split(df: Frame, spec: PipelineSpec, part: str) -> "tuple[Frame, pd.Series]":
    rows = df[df[SPLIT_COLUMN] == part]
    return rows[spec.feature_names], rows[spec.label]


def train_model(
    spec: PipelineSpec,
    training_set: Frame,
    torch_executor: TorchExecutorResource,
    *,
    checkpoint_dir: "Path",
    log: "logging.Logger",
    log_metric: "MetricLogger",
    pipes_context: AssetExecutionContext | None = None,
) -> Any:
    """Fit the spec's model kind on the training set's train rows; torch_mlp stops early on its
    holdout rows, checkpoints to `checkpoint_dir` and reports each epoch to `log_metric`
    (candidate_model and `reproduce` both train through here)."""
    X_train, y_train = split(training_set, spec, "train")
    log.info(f"training {spec.model.kind} on {len(X_train)} rows")
    if spec.model.kind != TORCH_KIND:
        estimator = build_estimator(spec)
        weights = train_weights(training_set)
        if weights is None:
            return estimator.fit(X_train, y_train)
        # A Pipeline routes the weights to its model step; CalibratedClassifierCV takes them.
        key = "model__sample_weight" if hasattr(estimator, "named_steps") else "sample_weight"
        return estimator.fit(X_train, y_train, **{key: weights})
    columns = [*spec.feature_names, spec.label]
    train = training_set.loc[training_set[SPLIT_COLUMN] == "train", columns]
    weights = train_weights(training_set)
    if weights is not None:  # the same expected loss as weighting it, for every torch launch
        log.info("torch: recency weights applied by a seeded weighted resample of the rows")
        train = train.sample(
            n=len(train), replace=True, weights=weights, random_state=spec.model.seed
        )
    return torch_executor.fit(
        train,
        training_set.loc[training_set[SPLIT_COLUMN] == "holdout", columns],
        TabularColumns(
            numeric=[f.name for f in spec.features if f.type == "numeric"],
            categorical=[f.name for f in spec.features if f.type == "categorical"],
            label=spec.label,
            task=spec.task.value,
            classes=spec.classes,
        ),
        seed=spec.model.seed,
        checkpoint_dir=checkpoint_dir,
        log=log,
        log_metric=log_metric,
        pipes_context=pipes_context,
    )


def log_model(model: Any, spec: PipelineSpec, X_example: Frame) -> Any:
    """Log and register the model in its flavor; returns MLflow's ModelInfo."""
    if spec.model.kind == TORCH_KIND:
        from mlops_resources.torch_executor import log_torch_model

        return log_torch_model(
            model, name="model", registered_model_name=spec.model_name, input_example=X_example
        )
    return log_sklearn_model(model, spec, X_example)


def log_sklearn_model(model: Any, spec: PipelineSpec, X_example: Frame) -> Any:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    signature = infer_signature(X_example, model.predict(X_example))
    return mlflow.sklearn.log_model(
        model,
        name="model",
        registered_model_name=spec.model_name,
        signature=signature,
        input_example=X_example.head(5),
        serialization_format="skops",
        pip_requirements=pinned_requirements("scikit-learn", "skops", "pandas"),
        skops_trusted_types=untrusted_types(model),
    )


def pinned_requirements(*packages: str) -> list[str]:
    """Exact pins of installed packages (skips MLflow's slow requirement inference)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


def untrusted_types(model: Any) -> list[str]:
    """Types skops does not trust by default in our own freshly trained pipeline."""
    import io

    import skops.io as sio

    buffer = io.BytesIO(sio.dumps(model))
    return sio.get_untrusted_types(data=buffer.getvalue())


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
        WINDOW_POLICY_TAG: str(meta.get("window_policy", "unknown")),
        CHANGE_DAY_VERSION_TAG: str(meta.get("change_day", "none")),
        LABEL_CUTOFF_TAG: str(meta.get("label_cutoff", "unknown")),
        REFERENCE_TAG: f"train rows of {', '.join(meta.get('days_used') or [])}",
        TRIGGER_VERSION_TAG: context.run.tags.get(TRIGGER_TAG, "manual"),
        ALARM_VERSION_TAG: context.run.tags.get(ALARM_PARTITION_TAG, "none"),
    }


def build_candidate_model(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        name="candidate_model",
        key_prefix=spec.name,
        ins=asset_ins(spec, "training_set"),
        partitions_def=daily_partitions(spec),
        group_name=spec.name,
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
        kinds={"mlflow", "pytorch" if spec.model.kind == TORCH_KIND else "scikit-learn"},
        retry_policy=MLFLOW_RETRY_POLICY,
        op_tags=k8s_gpu_tags() if spec.model.kind == TORCH_KIND else None,
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
            tags={"dagster.run_id": context.run_id, "dagster.partition": context.partition_key},
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
            metrics = evaluate(model, X_hold, y_hold, spec)
            context.log.info(f"holdout metrics: {metrics}")
            device = torch_executor.device_info() if spec.model.kind == TORCH_KIND else {}
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
                {f"holdout_{k}": v for k, v in metrics.items() if not math.isnan(v)}
            )
            mlflow_api.log_input(
                mlflow_api.data.from_pandas(
                    training_set, name=f"{spec.name}_training_set", targets=spec.label
                ),
                context="training",
            )
            info = log_model(model, spec, X_train.head(50))
            log_reference(model, spec, X_train, train_weights(training_set))
            report = log_governance(
                context,
                spec,
                model,
                training_set,
                torch_executor.settings_record() if spec.model.kind == TORCH_KIND else None,
            )
        version = str(info.registered_model_version)
        mlflow.tag_version(
            spec.model_name,
            version,
            {
                KIND_TAG: spec.model.kind,
                "mlops.partition": context.partition_key,
                "mlops.dagster_run_id": context.run_id,
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
                "model_version": version,
                "mlflow_run": MetadataValue.url(mlflow.run_url(run.info.run_id)),
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, version)
                ),
                "mlflow_run_id": run.info.run_id,
                **({"device": MetadataValue.json(device)} if device else {}),
                **{f"holdout_{k}": v for k, v in metrics.items()},
                **governance_metadata(report, card),
            },
        )
        yield AssetCheckResult(
            check_name=LOAD_CHECK,
            passed=loads,
            metadata={"rows_predicted": len(predictions), "model_uri": info.model_uri},
        )

    return candidate_model
