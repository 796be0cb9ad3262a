"""The scikit-learn estimator of a spec's model kind (hist_gradient_boosting, random_forest,
linear), optionally calibrated. scikit-learn is imported when one is built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_assets.spec import PipelineSpec


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
