"""Evaluation: a model's output for the spec's task and the metrics the gate accepts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_assets.spec import METRICS_BY_TASK, PipelineSpec, Task, metric_gain

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    Frame = pd.DataFrame


def positive_class(spec: PipelineSpec, classes: np.ndarray) -> Any:
    """The positive class of a binary task: the last of the spec's classes, else the last seen."""
    if spec.classes:
        return spec.classes[-1]
    return classes[-1]


def evaluate(model: Any, X: Frame, y: pd.Series, spec: PipelineSpec) -> dict[str, float]:
    """Holdout metrics for the spec's task (the names the gate accepts)."""
    return output_metrics(*model_output(model, X, spec), y, spec)


def model_output(model: Any, X: Frame, spec: PipelineSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities and the classes (classification), or predictions and None."""
    import numpy as np

    if not spec.is_classification:
        return np.asarray(model.predict(X), dtype=float), None
    return model.predict_proba(X), np.asarray(model.classes_)


def output_metrics(
    output: np.ndarray, classes: np.ndarray | None, y: pd.Series, spec: PipelineSpec
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


def monitored_output(model: Any, X: Frame, spec: PipelineSpec) -> np.ndarray:
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


def score(model: object, X: Frame, spec: PipelineSpec) -> Frame:
    """Predictions (and for binary tasks the positive-class score) for feature rows."""
    return output_frame(*model_output(model, X, spec), spec)


def output_frame(output: np.ndarray, classes: np.ndarray | None, spec: PipelineSpec) -> Frame:
    """`score`'s frame from a model's output (see model_output)."""
    import pandas as pd

    if classes is None:
        return pd.DataFrame({"prediction": output})
    proba = output
    out = pd.DataFrame({"prediction": classes[proba.argmax(axis=1)]})
    if len(classes) == 2:
        out["score"] = proba[:, list(classes).index(positive_class(spec, classes))]
    return out


def worsening(spec: PipelineSpec, metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference` in the metric's bad direction (NaN-safe)."""
    delta = -metric_gain(METRICS_BY_TASK[spec.task][metric], value, reference)
    return delta if not math.isnan(delta) else math.inf


def served_metrics(served: pd.DataFrame, spec: PipelineSpec) -> dict[str, float]:
    """The task's metrics of predictions as they were served (batch_predictions rows joined
    with their delivered labels): the positive-class score for binary tasks, the predicted
    class for multiclass (so its log_loss is that of hard predictions), else the prediction."""
    import numpy as np

    y = served[spec.label]
    if not spec.is_classification:
        return output_metrics(served["prediction"].to_numpy(dtype=float), None, y, spec)
    classes = np.asarray(
        spec.classes or sorted(set(y.tolist()) | set(served["prediction"].tolist()))
    )
    if "score" in served and len(classes) == 2:
        positive = list(classes).index(positive_class(spec, classes))
        proba = np.empty((len(served), 2))
        proba[:, positive] = served["score"].to_numpy(dtype=float)
        proba[:, 1 - positive] = 1.0 - proba[:, positive]
    else:
        proba = (served["prediction"].to_numpy()[:, None] == classes[None, :]).astype(float)
    return output_metrics(proba, classes, y, spec)
