"""Torch executor: trains a tabular MLP on CPU, CUDA or MPS, with checkpoint/resume and DDP.

Import everything from here (``from mlops_resources.torch_executor import ...``); the files
below are the layout, one concern each, in the order a fit uses them:

- ``resource.py``: ``TorchExecutorResource``, the Dagster resource; ``fit`` is the entry point.
- ``data.py``: ``TabularColumns`` and ``TabularSpec`` (preprocessing fitted on train, JSON).
- ``network.py``: ``TabularNet`` (embeddings + MLP) and its export wrapper, built lazily.
- ``device.py``: device and precision (AMP) selection, deterministic mode.
- ``loop.py``: ``run_training``, THE training loop (in-process path and every DDP rank).
- ``epoch.py``: ``TrainingRun``, the steps the loop takes (build, resume, train, score).
- ``metrics.py``: training losses and holdout scores.
- ``checkpoint.py``: checkpoint contents, resume fingerprint, atomic file writes.
- ``model.py``: ``TorchTabularModel``, the fitted estimator (scikit-learn interface).
- ``flavor.py``: ``log_torch_model`` / ``load_torch_model``, the MLflow pytorch flavor.
- ``ddp.py``: DDP jobs (written by ``fit``, run by every rank, collected back).
- ``launch.py``: torchrun command, local launch (Dagster Pipes), ECS and Kubernetes settings.
- ``ddp_worker.py``: what torchrun runs (``python -m mlops_resources.torch_executor.ddp_worker``).

Importing the package is light: torch, mlflow, pandas and numpy are imported inside the
functions that need them (Dagster loads it in the webserver, the daemon and every step).

Usage (outside Dagster; in an asset, pass ``context.log`` and an MLflow ``log_metric``):

>>> import logging, tempfile
>>> import numpy as np, pandas as pd
>>> from mlops_resources.torch_executor import TabularColumns, TorchExecutorResource
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"amount": rng.normal(size=400), "country": rng.choice(["de", "fr"], 400)})
>>> df["churned"] = np.where(df["amount"] > 0, "yes", "no")
>>> model = TorchExecutorResource(max_epochs=3).fit(
...     df[:300], df[300:],
...     TabularColumns(numeric=["amount"], categorical=["country"], label="churned",
...                    task="binary_classification", classes=["no", "yes"]),
...     seed=0, checkpoint_dir=tempfile.mkdtemp(), log=logging.getLogger("torch"),
...     log_metric=lambda name, value, epoch: None,
... )
>>> model.predict_proba(df[300:]).shape  # columns in the order of model.classes_
(100, 2)
"""

from __future__ import annotations

from typing import Any

from .checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT, run_fingerprint
from .data import MIN_CATEGORY_COUNT, SPEC_FORMAT, TASKS, TabularColumns, TabularSpec, fit_spec
from .ddp import collect_job_result, run_ddp_job
from .device import (
    DEVICES,
    PRECISIONS,
    describe_device,
    deterministic_mode,
    resolve_precision,
    select_device,
)
from .flavor import LOADER_MARKER, load_torch_model, log_torch_model
from .launch import ecs_pipes_launch_config, k8s_gpu_tags, torchrun_command
from .loop import MetricLogger, TrainOutcome, TrainSettings, run_training
from .metrics import roc_auc
from .model import MODEL_JSON, STATE_DICT_FILE, TorchTabularModel
from .network import PREDICT_BATCH, build_network, network_classes
from .resource import TorchExecutorResource

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "DEVICES",
    "LOADER_MARKER",
    "MIN_CATEGORY_COUNT",
    "MODEL_JSON",
    "PRECISIONS",
    "PREDICT_BATCH",
    "SPEC_FORMAT",
    "STATE_DICT_FILE",
    "TASKS",
    "MetricLogger",
    "TabularColumns",
    "TabularSpec",
    "TorchExecutorResource",
    "TorchTabularModel",
    "TrainOutcome",
    "TrainSettings",
    "build_network",
    "collect_job_result",
    "describe_device",
    "deterministic_mode",
    "ecs_pipes_launch_config",
    "fit_spec",
    "k8s_gpu_tags",
    "load_torch_model",
    "log_torch_model",
    "resolve_precision",
    "roc_auc",
    "run_ddp_job",
    "run_fingerprint",
    "run_training",
    "select_device",
    "torchrun_command",
]


def __getattr__(name: str) -> Any:  # lets pickle and users find the lazily defined classes
    if name == "TabularNet":
        return network_classes()[0]
    if name == "ExportedTabularNet":
        return network_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
