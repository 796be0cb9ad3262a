"""From entity rows to answers: Feast online features, request-time features, the model's
frame, and the model's output as label and score (classification) or value (regression)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_assets.features import feature_refs
from mlops_assets.ml.evaluation import model_output, positive_class

if TYPE_CHECKING:
    import pandas as pd

    from mlops_assets.spec import PipelineSpec
    from mlops_resources.feast_store import FeastResource


class UnknownEntities(LookupError):
    """Entity keys the online store has no features for (and the request does not complete)."""

    def __init__(self, keys: list[str], positions: list[int]) -> None:
        super().__init__(f"unknown entities {keys}")
        self.keys = keys
        self.positions = positions


@dataclass
class FeatureRows:
    """Rows ready for a model: keys, the frame and what was missing per row."""

    keys: list[str]
    frame: pd.DataFrame  # the spec's feature columns, in order
    missing: list[list[str]]  # per row, features neither the store nor the request had


@dataclass
class BatchRows(FeatureRows):
    """The rows of several requests scored together: per request, the slice of its rows in
    `keys` / `frame` / `missing`, or the UnknownEntities that refuses it (its rows left out)."""

    spans: list[slice | UnknownEntities]


def read_features(
    spec: PipelineSpec,
    feast: FeastResource,
    rows: list[dict[str, Any]],
    allow_missing: bool,
) -> FeatureRows:
    """The features of one request's entity rows (see read_batch); raises UnknownEntities."""
    batch = read_batch(spec, feast, [(rows, allow_missing)])
    if isinstance(batch.spans[0], UnknownEntities):
        raise batch.spans[0]
    return batch


def read_batch(
    spec: PipelineSpec,
    feast: FeastResource,
    requests: list[tuple[list[dict[str, Any]], bool]],
) -> BatchRows:
    """The features of each entity row of several requests (rows, allow_missing), with one
    online store read for all their distinct keys and one frame for all their rows: the
    request's own values (request-time features), else the online store's latest. A request
    naming an entity the online store does not know is refused (UnknownEntities, its rows left
    out) unless it gives all that entity's features or allows missing ones; a row missing only
    some features is answered (the model imputes them) and flagged."""
    import numpy as np
    import pandas as pd

    key_name, names = spec.entity_key, spec.feature_names
    unique = list(dict.fromkeys(row[key_name] for rows, _ in requests for row in rows))
    online = feast.online_feature_values([{key_name: key} for key in unique], feature_refs(spec))
    position = {key: i for i, key in enumerate(unique)}
    stored_columns = [online[name] for name in names]
    known = [
        any(not is_missing(column[at]) for column in stored_columns) for at in range(len(unique))
    ]
    keys: list[str] = []
    columns: list[list[Any]] = [[] for _ in names]
    missing: list[list[str]] = []
    spans: list[slice | UnknownEntities] = []
    for rows, allow_missing in requests:
        values, absent, unknown = [], [], []
        for i, row in enumerate(rows):
            at = position[row[key_name]]
            merged = [
                given if (given := row.get(name)) is not None else column[at]
                for name, column in zip(names, stored_columns, strict=True)
            ]
            lacking = [n for n, v in zip(names, merged, strict=True) if is_missing(v)]
            if lacking and not known[at] and not allow_missing:
                unknown.append(i)
            values.append(merged)
            absent.append(lacking)
        if unknown:
            spans.append(UnknownEntities([rows[i][key_name] for i in unknown], unknown))
            continue
        spans.append(slice(len(keys), len(keys) + len(rows)))
        keys += [row[key_name] for row in rows]
        missing += absent
        for merged in values:
            for column, value in zip(columns, merged, strict=True):
                column.append(value)
    # One array per column (None -> NaN for numeric ones): the frame is built once for the
    # batch, not converted column by column.
    frame = pd.DataFrame(
        {
            f.name: np.array(column, dtype=float if f.type == "numeric" else object)
            for f, column in zip(spec.features, columns, strict=True)
        },
        copy=False,
    )
    return BatchRows(keys, frame, missing, spans)


def probe_frame(spec: PipelineSpec) -> pd.DataFrame:
    """One row with every feature missing: what a model must be able to score (imputing them)
    before it is served."""
    import pandas as pd

    return pd.DataFrame(
        {
            f.name: pd.Series([None], dtype=float if f.type == "numeric" else object)
            for f in spec.features
        }
    )


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class Outputs:
    """A model's answers for rows: `prediction` (the label, or the value for regression) and
    `score` (binary: the positive class's probability; multiclass: the label's; regression:
    None)."""

    prediction: list[Any]
    score: list[float | None]


def predict(model: Any, frame: pd.DataFrame, spec: PipelineSpec) -> Outputs:
    """The model's output for the frame's rows, as plain Python values."""
    import numpy as np

    output, classes = model_output(model, frame, spec)
    if classes is None:
        return Outputs([float(v) for v in output], [None] * len(frame))
    chosen = output.argmax(axis=1)
    labels = [plain(v) for v in classes[chosen]]
    if len(classes) == 2:
        column = list(classes).index(positive_class(spec, classes))
        scores = output[:, column]
    else:
        scores = output[np.arange(len(frame)), chosen]
    return Outputs(labels, [float(s) for s in scores])


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for JSON and Parquet)."""
    return value.item() if hasattr(value, "item") else value


def entity_share(pipeline: str, key: str) -> float:
    """Where an entity key falls in [0, 1): the same for every request and every replica, so a
    canary answers the same entities while it runs (sticky)."""
    digest = hashlib.blake2b(f"{pipeline}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def canary_rows(pipeline: str, keys: list[str], fraction: float) -> list[bool]:
    """Per row, whether the canary (the challenger) answers it."""
    if fraction <= 0:
        return [False] * len(keys)
    return [entity_share(pipeline, key) < fraction for key in keys]
