"""From entity rows to answers: Feast online features, request-time features, the model's
frame, and the model's output as label and score (classification) or value (regression)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_assets.features import feature_refs
from mlops_assets.training import model_output, positive_class

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
    """One request's rows, ready for a model: keys, the frame and what was missing per row."""

    keys: list[str]
    frame: pd.DataFrame  # the spec's feature columns, in order
    missing: list[list[str]]  # per row, features neither the store nor the request had


def read_features(
    spec: PipelineSpec,
    feast: FeastResource,
    rows: list[dict[str, Any]],
    allow_missing: bool,
) -> FeatureRows:
    """The features of each entity row: the request's own values (request-time features), else
    the online store's latest. An entity the online store does not know is an error
    (UnknownEntities) unless the request gives all its features or `allow_missing`; a row
    missing only some features is answered (the model imputes them) and flagged."""
    import pandas as pd

    keys = [row[spec.entity_key] for row in rows]
    names = spec.feature_names
    unique = list(dict.fromkeys(keys))
    online = feast.online_feature_values(
        [{spec.entity_key: key} for key in unique], feature_refs(spec)
    )
    position = {key: i for i, key in enumerate(unique)}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    missing: list[list[str]] = []
    unknown: list[int] = []
    for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
        at = position[key]
        stored = {name: online[name][at] for name in names}
        known = any(not is_missing(v) for v in stored.values())
        values = {
            name: row.get(name) if row.get(name) is not None else stored[name] for name in names
        }
        absent = [name for name, value in values.items() if is_missing(value)]
        if not known and absent and not allow_missing:
            unknown.append(i)
        missing.append(absent)
        for name in names:
            columns[name].append(values[name])
    if unknown:
        raise UnknownEntities([keys[i] for i in unknown], unknown)
    import numpy as np

    # One array per column (None -> NaN for numeric ones): the frame is built once, not
    # converted column by column (a third of a single-entity request's time otherwise).
    frame = pd.DataFrame(
        {
            f.name: np.array(columns[f.name], dtype=float if f.type == "numeric" else object)
            for f in spec.features
        },
        copy=False,
    )
    return FeatureRows(keys, frame, missing)


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
