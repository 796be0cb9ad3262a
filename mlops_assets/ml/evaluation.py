"""Evaluation: a model's output for the spec's task and the metrics the gate accepts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_assets.spec import PipelineSpec, Task

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
    import numpy as np
    import pandas as pd

    if not spec.is_classification:
        return pd.DataFrame({"prediction": np.asarray(model.predict(X), dtype=float)})
    proba = model.predict_proba(X)
    classes = np.asarray(model.classes_)
    out = pd.DataFrame({"prediction": classes[proba.argmax(axis=1)]})
    if len(classes) == 2:
        out["score"] = proba[:, list(classes).index(positive_class(spec, classes))]
    return out
