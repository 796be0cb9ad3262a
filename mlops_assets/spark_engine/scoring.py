"""batch_predictions with Spark: the champion scores the partition on the executors.

`mlflow.pyfunc.spark_udf` is not used, on purpose. It loads the model on each executor with
`mlflow.pyfunc.load_model`, which follows the artifact's MLmodel file: its scikit-learn
flavor unpickles (or trusts the skops types the artifact itself lists), and it has no hook for
another loader. The suite never lets an artifact choose how it is deserialized
(mlops_resources/model_loading.py). So this module does what spark_udf does, with the suite's
loader: the driver downloads the registered version once and ships the folder to the
executors (SparkContext.addFile, as spark_udf ships its local copy), and a `mapInPandas`
function loads it there with `load_model_uri` (skops with the suite's trust list, or torch
weights-only; anything else is refused before a byte is deserialized), once per Python worker,
and scores Arrow batches with the same `score` as the pandas engine. The output columns are the
pandas engine's: the keys, `prediction` and, for binary tasks, `score`.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.spec import PipelineSpec, Task

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

# Models loaded in this Python worker, by shipped folder name: an executor's worker loads a
# version once and reuses it for every batch (Spark reuses Python workers by default).
_LOADED: dict[str, Any] = {}


def output_schema(spec: PipelineSpec) -> str:
    """The Spark schema of the scored rows: keys, prediction (and the positive-class score)."""
    prediction = "string" if spec.is_classification else "double"
    schema = f"`{spec.entity_key}` string, `{spec.timestamp}` timestamp, prediction {prediction}"
    binary = spec.task == Task.binary_classification
    return f"{schema}, score double" if binary else schema


@functools.cache
def shipped_models_folder() -> Path:
    """This process's folder of downloaded models, removed when the process exits (the rows
    are scored lazily, when the result is written after the step returns)."""
    folder = Path(tempfile.mkdtemp(prefix="mlops-spark-models-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def ship_model(df: DataFrame, model_uri: str) -> str:
    """Download `model_uri` once on the driver and add the folder to the Spark job's files;
    the name the executors find it under (SparkFiles.get)."""
    import mlflow

    name = f"model-{uuid.uuid4().hex[:12]}"
    target = shipped_models_folder() / name
    target.mkdir()
    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target))
    df.sparkSession.sparkContext.addFile(str(target), recursive=True)
    return name


def shipped_model(name: str) -> Any:
    """On an executor: the shipped model folder loaded by the suite's safe loader (cached)."""
    if name not in _LOADED:
        from pyspark import SparkFiles

        from mlops_resources.model_loading import load_model_uri

        folder = Path(SparkFiles.get(name))
        logged = next((p.parent for p in folder.rglob("MLmodel")), folder)
        _LOADED[name] = load_model_uri(logged.as_uri())
    return _LOADED[name]


def score_rows(df: DataFrame, spec: PipelineSpec, model_uri: str) -> DataFrame:
    """Every row of `df` (keys and features) scored by the model at `model_uri`, lazily: the
    rows stay on the executors until the result is written."""
    from mlops_assets.ml.evaluation import score

    name = ship_model(df, model_uri)
    keys = [spec.entity_key, spec.timestamp]
    features = spec.feature_names
    schema = output_schema(spec)
    has_score = schema.endswith("score double")

    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        model = shipped_model(name)
        for batch in batches:
            out = score(model, batch[features], spec)
            if spec.is_classification:
                out["prediction"] = out["prediction"].astype(str)
            if has_score and "score" not in out:
                out["score"] = float("nan")
            frame = pd.concat([batch[keys].reset_index(drop=True), out], axis=1)
            yield frame[[*keys, "prediction", *(["score"] if has_score else [])]]

    return df.select(*keys, *features).mapInPandas(predict, schema)
