"""One interface per model kind: how a spec's model is fitted, logged to MLflow and described.

`model_kind(spec)` returns the kind's implementation: `SklearnKind` for the scikit-learn kinds
(hist_gradient_boosting, random_forest, linear) and `TorchKind` for `torch_mlp`, which trains
through the Torch executor (mlops_resources.torch_executor). Callers never branch on the kind's
name. mlflow, sklearn, skops and the executor are imported inside methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlops_assets.ml.dataset import SPLIT_COLUMN, split, train_weights
from mlops_assets.ml.estimators import build_estimator
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import logging
    from pathlib import Path

    import pandas as pd

    from mlops_resources.torch_executor import MetricLogger, TorchExecutorResource

TORCH_KIND = "torch_mlp"


class ModelKind:
    """What differs between model kinds. `uses_executor`: trained by the Torch executor, whose
    settings are recorded with the version (and needed to reproduce it)."""

    asset_kind = ""
    uses_executor = False

    def fit(
        self,
        spec: PipelineSpec,
        training_set: pd.DataFrame,
        torch_executor: TorchExecutorResource,
        *,
        checkpoint_dir: Path,
        log: logging.Logger,
        log_metric: MetricLogger,
        pipes_context: Any = None,
    ) -> Any:
        raise NotImplementedError

    def log(self, model: Any, spec: PipelineSpec, X_example: pd.DataFrame) -> Any:
        """Log and register the model in its MLflow flavor; returns MLflow's ModelInfo."""
        raise NotImplementedError

    def op_tags(self) -> dict[str, Any] | None:
        """Tags of the training step (e.g. the GPU request of a Kubernetes pod)."""
        return None

    def device_info(self, torch_executor: TorchExecutorResource) -> dict[str, Any]:
        """Where the model trains, logged as MLflow params and asset metadata."""
        return {}

    def settings_record(self, torch_executor: TorchExecutorResource) -> dict[str, Any] | None:
        """The trainer's settings to record with the version, or None."""
        return None


class SklearnKind(ModelKind):
    """A scikit-learn pipeline (build_estimator), weighted through sample_weight, logged in
    the skops format."""

    asset_kind = "scikit-learn"

    def fit(self, spec, training_set, torch_executor, **_: Any) -> Any:
        X_train, y_train = split(training_set, spec, "train")
        estimator = build_estimator(spec)
        weights = train_weights(training_set)
        if weights is None:
            return estimator.fit(X_train, y_train)
        # A Pipeline routes the weights to its model step; CalibratedClassifierCV takes them.
        key = "model__sample_weight" if hasattr(estimator, "named_steps") else "sample_weight"
        return estimator.fit(X_train, y_train, **{key: weights})

    def log(self, model: Any, spec: PipelineSpec, X_example: pd.DataFrame) -> Any:
        return log_sklearn_model(model, spec, X_example)


class TorchKind(ModelKind):
    """A tabular MLP trained by the Torch executor: early stopping on the holdout rows,
    checkpoints, recency weights as a seeded weighted resample; the pytorch flavor."""

    asset_kind = "pytorch"
    uses_executor = True

    def fit(
        self,
        spec,
        training_set,
        torch_executor,
        *,
        checkpoint_dir,
        log,
        log_metric,
        pipes_context=None,
    ) -> Any:
        from mlops_resources.torch_executor import TabularColumns

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

    def log(self, model: Any, spec: PipelineSpec, X_example: pd.DataFrame) -> Any:
        from mlops_resources.torch_executor import log_torch_model

        return log_torch_model(
            model, name="model", registered_model_name=spec.model_name, input_example=X_example
        )

    def op_tags(self) -> dict[str, Any] | None:
        from mlops_resources.torch_executor import k8s_gpu_tags

        return k8s_gpu_tags()

    def device_info(self, torch_executor: TorchExecutorResource) -> dict[str, Any]:
        return torch_executor.device_info()

    def settings_record(self, torch_executor: TorchExecutorResource) -> dict[str, Any] | None:
        return torch_executor.settings_record()


def model_kind(spec: PipelineSpec) -> ModelKind:
    """The implementation of the spec's model kind."""
    return TorchKind() if spec.model.kind == TORCH_KIND else SklearnKind()


def train_model(
    spec: PipelineSpec,
    training_set: pd.DataFrame,
    torch_executor: TorchExecutorResource,
    *,
    checkpoint_dir: Path,
    log: logging.Logger,
    log_metric: MetricLogger,
    pipes_context: Any = None,
) -> Any:
    """Fit the spec's model kind on the training set's train rows; torch_mlp stops early on its
    holdout rows, checkpoints to `checkpoint_dir` and reports each epoch to `log_metric`
    (candidate_model and `reproduce` both train through here)."""
    rows = int((training_set[SPLIT_COLUMN] == "train").sum())
    log.info(f"training {spec.model.kind} on {rows} rows")
    return model_kind(spec).fit(
        spec,
        training_set,
        torch_executor,
        checkpoint_dir=checkpoint_dir,
        log=log,
        log_metric=log_metric,
        pipes_context=pipes_context,
    )


def log_model(model: Any, spec: PipelineSpec, X_example: pd.DataFrame) -> Any:
    """Log and register the model in its flavor; returns MLflow's ModelInfo."""
    return model_kind(spec).log(model, spec, X_example)


def log_sklearn_model(model: Any, spec: PipelineSpec, X_example: pd.DataFrame) -> Any:
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
