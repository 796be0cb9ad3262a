"""The MLflow flavor: ``log_torch_model`` logs a fitted model with the pytorch flavor (pickle-free
``pt2`` export) plus its two safe files; ``load_torch_model`` rebuilds it from those files,
unpickling nothing but tensors."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .model import MODEL_JSON, STATE_DICT_FILE, TorchTabularModel

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo

# Stored in every logged model's MLmodel metadata and checked on load: a fixed string, not
# derived from where the code lives, so models logged by any version keep loading.
LOADER_MARKER = "mlops_resources.torch_executor.load_torch_model"


def _pip_requirements() -> list[str]:
    import mlflow
    import numpy as np
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_torch_model(
    model: TorchTabularModel,
    *,
    name: str,
    registered_model_name: str,
    input_example: pd.DataFrame,
) -> ModelInfo:
    """Log with the MLflow pytorch flavor and register it; loadable by ``load_torch_model``.

    What is stored: the pytorch flavor in its pickle-free ``pt2`` format (``torch.export`` of
    ``model.exportable_module()``; tensor signature via ``mlflow.models.infer_signature`` on the
    encoded example), plus two extra files — ``model.json`` (preprocessing + architecture) and
    ``state_dict.pt`` (weights) — from which ``load_torch_model`` rebuilds the model without
    unpickling anything but tensors. The DataFrame-level signature (raw columns -> prediction)
    is stored in the model metadata under ``tabular_signature``.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    example = input_example[list(model.spec.features)].head(16)
    if len(example) == 0:
        raise ValueError("input_example must have at least one row")
    if len(example) == 1:  # a batch of 1 would make torch.export specialise the batch dimension
        example = example.iloc[[0, 0]]
    encoded = model.spec.encode_flat(example)
    module = model.exportable_module()
    with torch.no_grad():
        outputs = module(torch.from_numpy(encoded)).numpy()
    signature = infer_signature(encoded, outputs)
    tabular_signature = infer_signature(example, model.predict(example))
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        return mlflow.pytorch.log_model(
            module,
            name=name,
            registered_model_name=registered_model_name,
            signature=signature,
            input_example=encoded,
            serialization_format="pt2",
            extra_files=[str(Path(tmp) / MODEL_JSON), str(Path(tmp) / STATE_DICT_FILE)],
            pip_requirements=_pip_requirements(),
            metadata={
                "loader": LOADER_MARKER,
                "task": model.spec.task,
                "feature_columns": model.spec.features,
                "classes": model.spec.classes,
                "tabular_signature": tabular_signature.to_dict(),
            },
        )


def load_torch_model(model_uri: str) -> TorchTabularModel:
    """Load a model logged by ``log_torch_model``: JSON spec + weights_only state_dict."""
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    mlmodel = Model.load(str(local))
    if (mlmodel.metadata or {}).get("loader") != LOADER_MARKER:
        raise ValueError(f"{model_uri} was not logged by log_torch_model")
    extra = mlmodel.flavors.get("pytorch", {}).get("extra_files", [])
    paths = {Path(item["path"]).name: local / item["path"] for item in extra}
    if MODEL_JSON not in paths or STATE_DICT_FILE not in paths:
        raise ValueError(f"{model_uri} lacks {MODEL_JSON} / {STATE_DICT_FILE} extra files")
    return TorchTabularModel.from_files(paths[MODEL_JSON], paths[STATE_DICT_FILE])
