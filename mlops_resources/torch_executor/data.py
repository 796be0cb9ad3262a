"""Tabular data in, arrays out: which columns the network learns (``TabularColumns``) and the
preprocessing statistics fitted on the training rows (``TabularSpec``, stored as JSON).

Pure numpy/pandas, imported inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TASKS = ("binary_classification", "multiclass_classification", "regression")
SPEC_FORMAT = "mlops-torch-tabular/1"
MIN_CATEGORY_COUNT = 2  # rarer training categories map to the 'unknown' index (which then trains)


@dataclasses.dataclass(frozen=True)
class TabularColumns:
    """What the network learns: feature columns by type, the label column and the task
    (``classes`` for the classification tasks; ``classes[-1]`` is a binary task's positive)."""

    numeric: Sequence[str]
    categorical: Sequence[str]
    label: str
    task: str
    classes: Sequence[str] | None = None


@dataclasses.dataclass
class TabularSpec:
    """Preprocessing statistics and architecture of a tabular network, stored as JSON."""

    numeric: list[str]
    categorical: list[str]
    label: str
    task: str
    classes: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]
    vocab: list[list[str]]  # per categorical column; value vocab[i][j] -> index j + 1; 0 unknown
    embedding_dims: list[int]
    hidden_sizes: list[int]
    target_mean: float = 0.0
    target_std: float = 1.0
    format: str = SPEC_FORMAT

    @property
    def output_dim(self) -> int:
        return len(self.classes) if self.task == "multiclass_classification" else 1

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def cardinalities(self) -> list[int]:
        return [len(v) + 1 for v in self.vocab]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TabularSpec:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise ValueError(f"not a {SPEC_FORMAT} model description")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unexpected keys in model description: {sorted(unknown)}")
        return cls(**data)

    def encode_features(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Numeric block (imputed, standardized, float32) and category indices (int64)."""
        import numpy as np
        import pandas as pd

        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise KeyError(f"feature columns missing from the input: {missing}")
        n = len(df)
        if self.numeric:
            block = df[self.numeric]
            if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
                block = block.apply(pd.to_numeric, errors="coerce")
            raw = block.to_numpy(np.float64, na_value=np.nan)
            raw = np.where(np.isnan(raw), np.asarray(self.medians), raw)
            x_num = ((raw - np.asarray(self.means)) / np.asarray(self.stds)).astype(np.float32)
        else:
            x_num = np.zeros((n, 0), dtype=np.float32)
        x_cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (col, vocab) in enumerate(zip(self.categorical, self.vocab, strict=True)):
            x_cat[:, j] = pd.Index(vocab, dtype=object).get_indexer(_as_strings(df[col])) + 1
        return np.ascontiguousarray(x_num), x_cat

    def encode_flat(self, df: pd.DataFrame) -> np.ndarray:
        """One float32 matrix [numeric | category indices]: the exported model's input."""
        import numpy as np

        x_num, x_cat = self.encode_features(df)
        return np.concatenate([x_num, x_cat.astype(np.float32)], axis=1)

    def encode_target(self, series: pd.Series) -> np.ndarray:
        """Targets as the loss expects them: 0/1 float, class index, or standardized float."""
        import numpy as np
        import pandas as pd

        if self.task == "regression":
            y = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
            if np.isnan(y).any():
                raise ValueError(f"label column {self.label!r} has missing or non-numeric values")
            return ((y - self.target_mean) / self.target_std).astype(np.float32)
        codes = pd.Categorical(series.astype("string"), categories=self.classes).codes
        if (codes < 0).any():
            bad = sorted(set(series[codes < 0].astype(str).unique()))[:5]
            raise ValueError(f"label values {bad} are not among classes {self.classes}")
        if self.task == "binary_classification":
            return (codes == len(self.classes) - 1).astype(np.float32)
        return codes.astype(np.int64)

    def encode(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numeric block, category indices, targets): what ``run_training`` takes."""
        return (*self.encode_features(df), self.encode_target(df[self.label]))


# Pickles (a fitted model holds its spec) name the package, not this file: stored objects keep
# loading when files inside the package move.
TabularSpec.__module__ = __package__


def _as_strings(series: pd.Series) -> pd.Series:
    """Category values as str (missing stays missing); cheap when they already are str."""
    import pandas as pd

    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in (
        "string",
        "empty",
    ):
        return series
    return series.astype("string").astype(object)


def _embedding_dim(cardinality: int, configured: int) -> int:
    if configured > 0:
        return configured
    return int(min(16, max(2, round(1.6 * cardinality**0.56))))


def fit_spec(
    train: pd.DataFrame,
    columns: TabularColumns,
    *,
    hidden_sizes: Sequence[int],
    embedding_dim: int,
) -> TabularSpec:
    """Fit preprocessing statistics on the training rows."""
    import numpy as np
    import pandas as pd

    task, classes = columns.task, columns.classes
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not columns.numeric and not columns.categorical:
        raise ValueError("at least one numeric or categorical feature is required")
    if task == "regression":
        class_list: list[str] = []
    else:
        if not classes or len(classes) < 2:
            raise ValueError(f"{task} needs at least two classes, got {classes!r}")
        if task == "binary_classification" and len(classes) != 2:
            raise ValueError(f"binary_classification needs exactly two classes, got {classes!r}")
        class_list = [str(c) for c in classes]
    medians, means, stds = [], [], []
    for col in columns.numeric:
        values = pd.to_numeric(train[col], errors="coerce").to_numpy(np.float64)
        finite = values[~np.isnan(values)]
        median = float(np.median(finite)) if finite.size else 0.0
        filled = np.where(np.isnan(values), median, values)
        std = float(filled.std()) if filled.size else 1.0
        medians.append(median)
        means.append(float(filled.mean()) if filled.size else 0.0)
        stds.append(std if std > 1e-12 and math.isfinite(std) else 1.0)
    vocab = []
    for col in columns.categorical:
        counts = _as_strings(train[col]).value_counts(dropna=True)
        vocab.append(sorted(str(v) for v in counts[counts >= MIN_CATEGORY_COUNT].index))
    target_mean, target_std = 0.0, 1.0
    if task == "regression":
        y = pd.to_numeric(train[columns.label], errors="coerce").to_numpy(np.float64)
        target_mean = float(np.nanmean(y))
        target_std = float(np.nanstd(y)) or 1.0
    return TabularSpec(
        numeric=list(columns.numeric),
        categorical=list(columns.categorical),
        label=columns.label,
        task=task,
        classes=class_list,
        medians=medians,
        means=means,
        stds=stds,
        vocab=vocab,
        embedding_dims=[_embedding_dim(len(v) + 1, embedding_dim) for v in vocab],
        hidden_sizes=[int(h) for h in hidden_sizes],
        target_mean=target_mean,
        target_std=target_std,
    )
