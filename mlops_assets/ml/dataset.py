"""The training set as the models see it: its split and weight columns, the rows of a split,
the recency weights of the train rows and the content hash that is its data version."""

import hashlib
from typing import TYPE_CHECKING

from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The training set's split column: "train" or "holdout" (the newest labelled days).
SPLIT_COLUMN = "split"
# Per-row training weight: recency weights under the weighted policy, else 1.0.
WEIGHT_COLUMN = "sample_weight"


def split(df: "pd.DataFrame", spec: PipelineSpec, part: str) -> "tuple[pd.DataFrame, pd.Series]":
    """The features and labels of the rows of one split (`train` or `holdout`)."""
    rows = df[df[SPLIT_COLUMN] == part]
    return rows[spec.feature_names], rows[spec.label]


def train_weights(training_set: "pd.DataFrame") -> "np.ndarray | None":
    """The train rows' recency weights, or None when every row weighs the same."""
    if WEIGHT_COLUMN not in training_set:
        return None
    weights = training_set.loc[training_set[SPLIT_COLUMN] == "train", WEIGHT_COLUMN].to_numpy()
    return None if (weights == weights[0]).all() else weights


def content_hash(df: "pd.DataFrame") -> str:
    """A stable hash of a DataFrame's values and column names (the DataVersion)."""
    import pandas as pd

    digest = hashlib.sha256(",".join(map(str, df.columns)).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
