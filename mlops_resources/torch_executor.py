"""Torch executor: trains a tabular MLP on CPU, CUDA or MPS, with checkpoint/resume and DDP.

The resource is light to import: torch, mlflow, pandas and scikit-learn are imported inside the
functions that need them (Dagster loads this module in the webserver, the daemon and every step).

Pieces, in the order they are used:

- ``TabularSpec``: preprocessing statistics and architecture, fitted on the training rows and
  stored as JSON (train medians/means/stds, category vocabularies, classes, target scaling).
- ``TabularNet`` (built lazily): per-category embeddings + numeric inputs -> MLP.
- ``run_training``: THE training loop, shared by the in-process path and by every DDP rank
  (``mlops_resources.torch_ddp_worker``). Atomic checkpoints; resume; early stopping.
- ``TorchExecutorResource.fit``: device and precision selection, then in-process training or a
  ``torchrun`` launch through Dagster Pipes (``nproc_per_node > 1``).
- ``TorchTabularModel``: a fitted estimator with the scikit-learn prediction interface.
- ``log_torch_model`` / ``load_torch_model``: MLflow pytorch flavor, loaded back without
  unpickling arbitrary objects (state_dict via ``torch.load(weights_only=True)`` + JSON).
- ``ecs_pipes_launch_config`` / ``k8s_gpu_tags``: remote GPU launch settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from dagster import AssetExecutionContext
    from mlflow.models.model import ModelInfo

TASKS = ("binary_classification", "multiclass_classification", "regression")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
SPEC_FORMAT = "mlops-torch-tabular/1"
CHECKPOINT_FORMAT = "mlops-torch-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_JSON = "model.json"
STATE_DICT_FILE = "state_dict.pt"
MIN_CATEGORY_COUNT = 2  # rarer training categories map to the 'unknown' index (which then trains)
PREDICT_BATCH = 65536

MetricLogger = Callable[[str, float, int], None]


@dataclasses.dataclass(frozen=True)
class TabularColumns:
    """What the network learns: feature columns by type, the label column and the task
    (``classes`` for the classification tasks; ``classes[-1]`` is a binary task's positive)."""

    numeric: Sequence[str]
    categorical: Sequence[str]
    label: str
    task: str
    classes: Sequence[str] | None = None


# --------------------------------------------------------------------------------------------
# Preprocessing spec (pure numpy/pandas; JSON round-trip)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Networks (defined on first use so that importing this module does not import torch)
# --------------------------------------------------------------------------------------------


@functools.cache
def _network_classes() -> tuple[type, type]:
    import torch
    from torch import nn

    class TabularNet(nn.Module):
        """Category embeddings concatenated with numeric inputs, then an MLP."""

        def __init__(
            self,
            n_numeric: int,
            cardinalities: Sequence[int],
            embedding_dims: Sequence[int],
            hidden_sizes: Sequence[int],
            output_dim: int,
        ) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(
                nn.Embedding(c, d) for c, d in zip(cardinalities, embedding_dims, strict=True)
            )
            layers: list[nn.Module] = []
            width = n_numeric + sum(embedding_dims)
            for size in hidden_sizes:
                layers += [nn.Linear(width, size), nn.ReLU()]
                width = size
            layers.append(nn.Linear(width, output_dim))
            self.mlp = nn.Sequential(*layers)

        def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
            parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
            return self.mlp(torch.cat(parts, dim=1))

    class ExportedTabularNet(nn.Module):
        """One float input [numeric | category indices] -> probabilities or predictions."""

        def __init__(self, net: nn.Module, spec_json: str) -> None:
            super().__init__()
            spec = TabularSpec.from_json(spec_json)
            self.net = net
            self.n_numeric = len(spec.numeric)
            self.task = spec.task
            self.target_mean = spec.target_mean
            self.target_std = spec.target_std

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x[:, : self.n_numeric], x[:, self.n_numeric :].long())
            if self.task == "binary_classification":
                p = torch.sigmoid(out)
                return torch.cat([1 - p, p], dim=1)
            if self.task == "multiclass_classification":
                return torch.softmax(out, dim=1)
            return out * self.target_std + self.target_mean

    for cls in (TabularNet, ExportedTabularNet):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return TabularNet, ExportedTabularNet


def __getattr__(name: str) -> Any:  # lets pickle and users find the lazily defined classes
    if name == "TabularNet":
        return _network_classes()[0]
    if name == "ExportedTabularNet":
        return _network_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_network(spec: TabularSpec) -> torch.nn.Module:
    """A freshly initialised network for a spec (uses torch's global RNG)."""
    tabular_net = _network_classes()[0]
    return tabular_net(
        len(spec.numeric),
        spec.cardinalities,
        spec.embedding_dims,
        spec.hidden_sizes,
        spec.output_dim,
    )


# --------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str, device_index: int = 0) -> torch.device:
    """auto -> cuda:<index> if available, else mps, else cpu. Explicit unavailable -> error."""
    import torch

    choice = requested.lower().strip()
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif _mps_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "TorchExecutorResource: device='cuda' was requested but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). "
                "Use device='auto' to fall back to MPS/CPU, or run on a GPU host."
            )
        count = torch.cuda.device_count()
        if not 0 <= device_index < count:
            raise RuntimeError(
                f"TorchExecutorResource: device_index={device_index} but only {count} CUDA "
                "device(s) are visible."
            )
        return torch.device("cuda", device_index)
    if choice == "mps":
        if not _mps_available():
            raise RuntimeError(
                "TorchExecutorResource: device='mps' was requested but the MPS backend is not "
                "available. Use device='auto' or 'cpu'."
            )
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(device_type: str, precision: str) -> tuple[str, str | None]:
    """The precision actually used on this device type, and a message when it falls back."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32", None
    supported = False
    if device_type == "cuda":
        supported = precision == "fp16" or torch.cuda.is_bf16_supported()
    elif device_type == "cpu":
        supported = precision == "bf16"
    if supported:
        return precision, None
    return "fp32", (
        f"TorchExecutorResource: precision={precision!r} is not supported on {device_type} by "
        "this executor (supported: fp16/bf16 on CUDA with bf16-capable GPUs for bf16, bf16 on "
        "CPU); falling back to fp32."
    )


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device) -> dict[str, str]:
    """Name and memory of a device, as strings (for MLflow params and asset metadata)."""
    import torch

    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(index),
            "device_memory": f"{props.total_memory / 2**30:.1f} GiB",
            "device_count": str(torch.cuda.device_count()),
        }
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    if device.type == "mps":
        name = f"Apple MPS ({name})"
    return {
        "device": str(device),
        "device_name": name,
        "device_memory": memory,
        "device_count": str(os.cpu_count() or 1) + " cpu cores",
    }


@contextlib.contextmanager
def deterministic_mode(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms (warn only) for the duration of training; restored afterwards."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


# --------------------------------------------------------------------------------------------
# The training loop (shared by the in-process path and every DDP rank)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSettings:
    """Hyperparameters of one training run (JSON-serialisable; sent to DDP workers)."""

    seed: int
    max_epochs: int
    batch_size: int
    learning_rate: float
    patience: int
    checkpoint_every: int
    precision: str = "fp32"
    deadline: float | None = None  # time.time() after which no new epoch starts


@dataclasses.dataclass
class TrainOutcome:
    """What run_training returns: the best weights and the per-epoch history."""

    state_dict: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    resumed_from_epoch: int  # 0 = fresh start
    epochs_run: list[int]
    stop_reason: str


def run_fingerprint(
    spec: TabularSpec, settings: TrainSettings, arrays: Sequence[Sequence[np.ndarray]]
) -> str:
    """What a checkpoint must match to be resumed: architecture, stats, encoded data (train and
    holdout, row order included) and the hyperparameters that shape the trajectory."""
    import numpy as np

    keys = ("seed", "batch_size", "learning_rate", "precision")
    digest = hashlib.blake2b(digest_size=32)
    digest.update(spec.to_json().encode())
    digest.update(json.dumps({k: getattr(settings, k) for k in keys}, sort_keys=True).encode())
    for group in arrays:
        for array in group:
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _cpu_state(module: torch.nn.Module) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _load_checkpoint(
    path: Path, fingerprint: str, log: logging.Logger, *, may_rename: bool
) -> dict[str, Any] | None:
    import torch

    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") == CHECKPOINT_FORMAT and state.get("fingerprint") == fingerprint:
        return state
    stale = path.with_name(f"{path.stem}.stale-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    log.warning(
        "checkpoint %s belongs to a different model, data or hyperparameters; "
        "starting fresh (old checkpoint kept as %s)",
        path,
        stale.name,
    )
    if may_rename:
        os.replace(path, stale)
    return None


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged); NaN when only one class is present."""
    import numpy as np

    positive = np.asarray(y) > 0.5
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ordered = np.asarray(score)[order]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    ranks = np.bincount(group, weights=np.arange(1, len(ordered) + 1)) / np.bincount(group)
    rank_sum = ranks[group][positive[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _evaluate(
    net: torch.nn.Module,
    spec: TabularSpec,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[float, str, float]:
    """Holdout mean loss and the task metric (roc_auc, accuracy or rmse in target units)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    x_num, x_cat, y = data
    net.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(y), PREDICT_BATCH):
            with autocast():
                outs.append(
                    net(
                        x_num[start : start + PREDICT_BATCH], x_cat[start : start + PREDICT_BATCH]
                    ).float()
                )
        out = torch.cat(outs)
        if spec.task == "binary_classification":
            loss = F.binary_cross_entropy_with_logits(out[:, 0], y).item()
            metric = ("epoch_holdout_roc_auc", roc_auc(y.cpu().numpy(), out[:, 0].cpu().numpy()))
        elif spec.task == "multiclass_classification":
            loss = F.cross_entropy(out, y).item()
            metric = ("epoch_holdout_accuracy", (out.argmax(1) == y).float().mean().item())
        else:
            loss = F.mse_loss(out[:, 0], y).item()
            metric = ("epoch_holdout_rmse", math.sqrt(loss) * spec.target_std)
    net.train()
    return loss, metric[0], float(metric[1])


def _loss_fn(task: str, reduction: str) -> Callable[[Any, Any], Any]:
    import torch.nn.functional as F  # noqa: N812

    if task == "binary_classification":
        return lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y, reduction=reduction)
    if task == "multiclass_classification":
        return lambda out, y: F.cross_entropy(out, y, reduction=reduction)
    return lambda out, y: F.mse_loss(out[:, 0], y, reduction=reduction)


def run_training(
    spec: TabularSpec,
    settings: TrainSettings,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    device: torch.device,
    fingerprint: str,
    checkpoint_path: Path,
    log: logging.Logger,
    log_metric: MetricLogger,
    rank: int = 0,
    world_size: int = 1,
) -> TrainOutcome:
    """Train with early stopping, atomic checkpoints and resume; DDP-aware when world_size > 1.

    Batches: every epoch draws one global permutation from a generator seeded with
    (seed, epoch); with DDP each rank takes an interleaved shard of every global batch and the
    loss is scaled so that DDP's gradient averaging yields the global-batch mean. The same seed
    therefore gives the same model for any world size (up to float summation order), and a
    resumed run continues exactly where the checkpoint left off.
    """
    import random

    import numpy as np
    import torch

    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

    random.seed(settings.seed)
    np.random.seed(settings.seed % 2**32)
    torch.manual_seed(settings.seed)
    net = build_network(spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    use_scaler = settings.precision == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None

    best_loss, best_epoch, bad_epochs, start_epoch = math.inf, 0, 0, 0
    history: list[dict[str, float]] = []
    best_state: dict[str, Any] | None = None
    checkpoint = _load_checkpoint(checkpoint_path, fingerprint, log, may_rename=rank == 0)
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng_torch"])
        if device.type == "cuda" and checkpoint.get("rng_cuda"):
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
        start_epoch = int(checkpoint["epoch"])
        best_loss = float(checkpoint["best_loss"])
        best_epoch = int(checkpoint["best_epoch"])
        bad_epochs = int(checkpoint["bad_epochs"])
        history = list(checkpoint["history"])
        best_state = checkpoint["best_state"]
        if rank == 0:
            log.info("resuming from checkpoint %s after epoch %d", checkpoint_path, start_epoch)
    model = net
    if distributed:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    def to_device(arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)

    x_num, x_cat, y = to_device(train)
    holdout_t = to_device(holdout) if rank == 0 else None
    n = len(y)
    if n == 0 or len(holdout[2]) == 0:
        raise ValueError("train and holdout must both contain rows")
    # one process: mean loss per batch. DDP: sum over this rank's shard / global batch size *
    # world size, so that DDP's gradient averaging gives the global-batch mean.
    loss_fn = _loss_fn(spec.task, "sum" if distributed else "mean")
    autocast = functools.partial(_autocast, device, settings.precision)
    if settings.precision == "fp32":
        autocast = contextlib.nullcontext
    batch = settings.batch_size
    epochs_run: list[int] = []
    stop_reason = "max_epochs"
    if bad_epochs >= settings.patience:
        stop_reason = "early_stopping"

    epoch = start_epoch
    while epoch < settings.max_epochs and bad_epochs < settings.patience:
        if settings.deadline is not None and time.time() > settings.deadline:
            raise TimeoutError(
                f"training deadline passed before epoch {epoch + 1}; "
                "the last checkpoint can be resumed"
            )
        epoch += 1
        started = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=generator).to(device)
        batch_losses = []
        for begin in range(0, n, batch):
            idx = perm[begin : begin + batch]
            if distributed:
                scale = world_size / idx.numel()
                idx = idx[rank::world_size]
            with autocast():
                out = model(x_num[idx], x_cat[idx])
            batch_loss = loss_fn(out.float(), y[idx])
            batch_losses.append(batch_loss.detach())
            if distributed:
                batch_loss = batch_loss * scale
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(batch_loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                batch_loss.backward()
                optimizer.step()
        losses = torch.stack(batch_losses).double()
        if not distributed:  # batch means -> sum over rows (the last batch may be smaller)
            sizes = torch.full_like(losses, float(batch))
            sizes[-1] = n - batch * (len(batch_losses) - 1)
            losses = losses * sizes
        stats = torch.zeros(3, dtype=torch.float64, device=device)
        stats[0] = losses.sum()
        metric_name = ""
        if rank == 0:
            assert holdout_t is not None
            holdout_loss, metric_name, metric_value = _evaluate(net, spec, holdout_t, autocast)
            stats[1], stats[2] = holdout_loss, metric_value
        if distributed:
            dist.all_reduce(stats[:1])
            dist.broadcast(stats[1:], src=0)
        train_loss = stats[0].item() / n
        holdout_loss, metric_value = stats[1].item(), stats[2].item()
        if holdout_loss < best_loss:
            best_loss, best_epoch, bad_epochs = holdout_loss, epoch, 0
            best_state = _cpu_state(net) if rank == 0 else None
        else:
            bad_epochs += 1
        stopping = bad_epochs >= settings.patience
        if stopping:
            stop_reason = "early_stopping"
        epochs_run.append(epoch)
        if rank != 0:
            continue
        record = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "holdout_loss": holdout_loss,
            metric_name: metric_value,
        }
        history.append(record)
        if epoch % settings.checkpoint_every == 0 or stopping or epoch == settings.max_epochs:
            _atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": _cpu_state(net),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng_torch": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "best_state": best_state,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                },
                checkpoint_path,
            )
        seconds = time.perf_counter() - started
        log.info(
            "epoch %d/%d train_loss=%.5f holdout_loss=%.5f %s=%.5f best_epoch=%d "
            "(%.2fs, %.0f samples/s)%s",
            epoch,
            settings.max_epochs,
            train_loss,
            holdout_loss,
            metric_name,
            metric_value,
            best_epoch,
            seconds,
            n / max(seconds, 1e-9),
            " - early stopping" if stopping else "",
        )
        log_metric("train_loss", train_loss, epoch)
        log_metric("holdout_loss", holdout_loss, epoch)
        log_metric(metric_name, metric_value, epoch)

    final_state = best_state if best_state is not None else _cpu_state(net)
    return TrainOutcome(
        state_dict=final_state,
        history=history,
        best_epoch=best_epoch,
        resumed_from_epoch=start_epoch,
        epochs_run=epochs_run,
        stop_reason=stop_reason,
    )


# --------------------------------------------------------------------------------------------
# The fitted model
# --------------------------------------------------------------------------------------------


class TorchTabularModel:
    """A fitted tabular network with the scikit-learn prediction interface (CPU inference).

    ``predict(df)`` returns class labels (strings) or floats, ``predict_proba(df)`` returns
    ``(n, n_classes)`` probabilities in the order of ``classes_``. Input: the raw feature
    DataFrame; numeric NaN is imputed with train medians, unseen categories map to 'unknown'.
    """

    def __init__(
        self,
        spec: TabularSpec,
        state_dict: dict[str, Any],
        *,
        history: list[dict[str, float]] | None = None,
        best_epoch: int | None = None,
        stop_reason: str | None = None,
    ) -> None:
        import numpy as np
        import torch

        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # building initialises weights: keep caller RNG
            self.network = build_network(spec)
        self.network.load_state_dict(state_dict)
        self.network.eval()
        self.history = list(history or [])
        self.best_epoch = best_epoch
        self.stop_reason = stop_reason
        self.feature_names_in_ = np.asarray(spec.features, dtype=object)
        self.n_features_in_ = len(spec.features)
        if spec.task != "regression":
            self.classes_ = np.asarray(spec.classes)

    @property
    def _estimator_type(self) -> str:
        return "regressor" if self.spec.task == "regression" else "classifier"

    @property
    def task(self) -> str:
        return self.spec.task

    def _raw(self, df: pd.DataFrame) -> np.ndarray:
        import numpy as np
        import torch

        x_num, x_cat = self.spec.encode_features(df)
        outs = []
        with torch.no_grad():
            for start in range(0, len(x_num), PREDICT_BATCH):
                stop = start + PREDICT_BATCH
                out = self.network(
                    torch.from_numpy(x_num[start:stop]), torch.from_numpy(x_cat[start:stop])
                )
                outs.append(out.float().numpy())
        if not outs:
            return np.zeros((0, self.spec.output_dim), dtype=np.float32)
        return np.concatenate(outs)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        import numpy as np

        if self.spec.task == "regression":
            raise AttributeError("predict_proba is only available for classification")
        raw = self._raw(df).astype(np.float64)
        if self.spec.task == "binary_classification":
            p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        raw -= raw.max(axis=1, keepdims=True)
        e = np.exp(raw)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Class labels (strings) for classification, floats for regression."""
        import numpy as np

        if self.spec.task == "regression":
            raw = self._raw(df)[:, 0].astype(np.float64)
            return raw * self.spec.target_std + self.spec.target_mean
        return self.classes_[self.predict_proba(df).argmax(axis=1)]

    def state_dict(self) -> dict[str, Any]:
        """The network weights (CPU tensors)."""
        return _cpu_state(self.network)

    def exportable_module(self) -> torch.nn.Module:
        """The network behind one float input [numeric | category indices] (torch.export-able)."""
        exported_cls = _network_classes()[1]
        return exported_cls(self.network, self.spec.to_json()).eval()

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description: spec plus training summary."""
        return {
            "spec": json.loads(self.spec.to_json()),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` (spec, history) and ``state_dict.pt`` (weights only)."""
        directory = Path(directory)
        _atomic_torch_save(self.state_dict(), directory / STATE_DICT_FILE)
        _atomic_write_text(
            json.dumps(self.describe(), indent=1, allow_nan=True), directory / MODEL_JSON
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TorchTabularModel:
        """Safe load: JSON for the spec, ``torch.load(weights_only=True)`` for the weights."""
        return cls.from_files(Path(directory) / MODEL_JSON, Path(directory) / STATE_DICT_FILE)

    @classmethod
    def from_files(cls, model_json: Path, state_dict_file: Path) -> TorchTabularModel:
        """Rebuild from a model.json and a state_dict file, unpickling nothing but tensors."""
        import torch

        described = json.loads(Path(model_json).read_text())
        spec = TabularSpec.from_json(json.dumps(described["spec"]))
        state = torch.load(state_dict_file, map_location="cpu", weights_only=True)
        return cls(
            spec,
            state,
            history=described.get("history"),
            best_epoch=described.get("best_epoch"),
            stop_reason=described.get("stop_reason"),
        )

    def __repr__(self) -> str:
        return (
            f"TorchTabularModel(task={self.spec.task!r}, features={len(self.spec.features)}, "
            f"hidden={self.spec.hidden_sizes}, best_epoch={self.best_epoch})"
        )


# --------------------------------------------------------------------------------------------
# DDP launch (torchrun through Dagster Pipes or a plain subprocess)
# --------------------------------------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def torchrun_command(
    job_path: str | Path,
    *,
    nproc_per_node: int,
    python: str = sys.executable,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    timeout_seconds: float | None = None,
) -> list[str]:
    """The torchrun command line that runs ``mlops_resources.torch_ddp_worker`` on one node."""
    command = [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc_per_node}",
        "--max-restarts=0",
        f"--master-addr={master_addr}",
        f"--master-port={master_port or _free_port(master_addr)}",
        "-m",
        "mlops_resources.torch_ddp_worker",
        "--job",
        str(job_path),
    ]
    timeout_bin = shutil.which("timeout")
    if timeout_seconds and timeout_bin:
        command = [timeout_bin, "--kill-after=30", str(max(1, int(timeout_seconds))), *command]
    return command


def _stream_subprocess(
    command: list[str], env: dict[str, str], cwd: str, log: logging.Logger, timeout: float
) -> None:
    """Run a command, forwarding its output lines to ``log``; kill it after ``timeout``."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.info("[torchrun] %s", line.rstrip())
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
    if code != 0:
        raise RuntimeError(f"torchrun failed with exit code {code}: {shlex.join(command)}")


def run_ddp_job(
    job: dict[str, Any],
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    log: logging.Logger,
    report_epoch: Callable[[dict[str, float]], None] | None = None,
) -> None:
    """One DDP rank's work (called by ``torch_ddp_worker`` after init_process_group)."""
    import pandas as pd

    spec = TabularSpec.from_json(job["spec"])
    settings = TrainSettings(**job["settings"])
    precision, message = resolve_precision(device.type, settings.precision)
    if message and rank == 0:
        log.warning(message)
    settings = dataclasses.replace(settings, precision=precision)
    columns = [*spec.features, spec.label]
    frames = [pd.read_parquet(job[key], columns=columns) for key in ("train", "holdout")]
    arrays = [(*spec.encode_features(f), spec.encode_target(f[spec.label])) for f in frames]
    metrics: dict[str, float] = {}

    def log_metric(name: str, value: float, step: int) -> None:
        metrics[name] = value
        if report_epoch is not None and len(metrics) == 3:
            report_epoch({"epoch": step, **metrics})
            metrics.clear()

    with deterministic_mode(device):
        outcome = run_training(
            spec,
            settings,
            arrays[0],
            arrays[1],
            device=device,
            fingerprint=job["fingerprint"],
            checkpoint_path=Path(job["checkpoint"]),
            log=log,
            log_metric=log_metric,
            rank=rank,
            world_size=world_size,
        )
    if rank == 0:
        result_dir = Path(job["result_dir"])
        TorchTabularModel(
            spec,
            outcome.state_dict,
            history=outcome.history,
            best_epoch=outcome.best_epoch,
            stop_reason=outcome.stop_reason,
        ).save(result_dir)
        summary = {
            "token": job["token"],
            "epochs_run": outcome.epochs_run,
            "resumed_from_epoch": outcome.resumed_from_epoch,
            "world_size": world_size,
        }
        _atomic_write_text(json.dumps(summary), result_dir / "run.json")
        log.info(
            "rank 0 wrote the final model to %s (best epoch %d, %s)",
            result_dir,
            outcome.best_epoch,
            outcome.stop_reason,
        )


# --------------------------------------------------------------------------------------------
# The resource
# --------------------------------------------------------------------------------------------


class TorchExecutorResource(ConfigurableResource):
    """Trains tabular neural networks with PyTorch: CPU/CUDA/MPS, AMP, checkpoints, DDP."""

    device: str = Field(
        default="auto",
        description="auto|cpu|cuda|mps. auto = cuda:<device_index> if available, else mps, else "
        "cpu. An explicitly requested device that is unavailable is an error.",
    )
    device_index: int = Field(default=0, description="CUDA device index for single-process runs.")
    precision: str = Field(
        default="fp32",
        description="fp32|bf16|fp16 autocast (GradScaler for fp16 on CUDA). Unsupported "
        "combinations (fp16 on CPU, anything on MPS) fall back to fp32 with a logged warning.",
    )
    max_epochs: int = Field(default=30, description="Maximum number of epochs.")
    batch_size: int = Field(default=512, description="Global batch size (split across DDP ranks).")
    learning_rate: float = Field(default=1e-3, description="Adam learning rate.")
    patience: int = Field(
        default=5, description="Early stopping: epochs without holdout-loss improvement."
    )
    checkpoint_every: int = Field(default=1, description="Write a checkpoint every N epochs.")
    nproc_per_node: int = Field(
        default=1,
        description=">1 launches torchrun DDP with this many processes (Dagster Pipes when a "
        "context is given); gloo on CPU, nccl on CUDA (one GPU per process).",
    )
    hidden_sizes: list[int] = Field(default=[64, 32], description="MLP hidden layer widths.")
    embedding_dim: int = Field(
        default=4,
        description="Embedding width per categorical column; 0 = per-column heuristic "
        "min(16, round(1.6 * cardinality**0.56)).",
    )
    timeout_seconds: float = Field(
        default=24 * 3600.0,
        description="Upper bound for one fit: no epoch starts after it; DDP launches are "
        "killed after it (plus 30 s grace).",
    )

    def _validate(self) -> None:
        checks = {
            "max_epochs": self.max_epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "patience": self.patience >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "nproc_per_node": self.nproc_per_node >= 1,
            "hidden_sizes": all(h >= 1 for h in self.hidden_sizes),
            "embedding_dim": self.embedding_dim >= 0,
            "timeout_seconds": self.timeout_seconds > 0,
            "precision": self.precision in PRECISIONS,
            "device": self.device.lower().strip() in DEVICES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TorchExecutorResource: invalid values for {bad}")

    def resolve(self, log: logging.Logger | None = None) -> tuple[torch.device, str]:
        """The device and effective precision this configuration uses on this machine."""
        device = select_device(self.device, self.device_index)
        precision, message = resolve_precision(device.type, self.precision)
        if message and log is not None:
            log.warning(message)
        return device, precision

    def device_info(self) -> dict[str, str]:
        """Chosen device, its name and memory, the effective precision, torch version."""
        import torch

        device, precision = self.resolve()
        info = describe_device(device)
        info.update(
            {
                "precision": precision,
                "requested_precision": self.precision,
                "torch_version": torch.__version__,
                "nproc_per_node": str(self.nproc_per_node),
            }
        )
        return info

    def settings_record(self) -> dict[str, Any]:
        """This configuration with the device it resolves to here (not "auto"), so the same
        training can be rebuilt with ``TorchExecutorResource(**record)``."""
        record = {name: getattr(self, name) for name in type(self).model_fields}
        record["device"] = self.resolve()[0].type
        return record

    def _plan(
        self,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        columns: TabularColumns,
        *,
        seed: int,
        precision: str,
    ) -> tuple[TabularSpec, TrainSettings, list[tuple[np.ndarray, ...]], str]:
        """Preprocessing spec, settings, encoded arrays and the checkpoint fingerprint."""
        self._validate()
        spec = fit_spec(
            train, columns, hidden_sizes=self.hidden_sizes, embedding_dim=self.embedding_dim
        )
        settings = TrainSettings(
            seed=int(seed),
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            checkpoint_every=self.checkpoint_every,
            precision=precision,
            deadline=time.time() + self.timeout_seconds,
        )
        arrays = [
            (*spec.encode_features(f), spec.encode_target(f[columns.label]))
            for f in (train, holdout)
        ]
        return spec, settings, arrays, run_fingerprint(spec, settings, arrays)

    def fit(
        self,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        columns: TabularColumns,
        *,
        seed: int,
        checkpoint_dir: Path,
        log: logging.Logger,
        log_metric: MetricLogger,
        pipes_context: AssetExecutionContext | None = None,
    ) -> TorchTabularModel:
        """Train on ``train`` with early stopping on ``holdout``; resume from checkpoint_dir.

        Per-epoch ``train_loss``, ``holdout_loss`` and the holdout metric
        (``epoch_holdout_roc_auc``, ``epoch_holdout_accuracy`` or ``epoch_holdout_rmse``) go to
        ``log_metric(name, value, epoch)``.
        The returned model holds the weights of the best holdout epoch. With
        ``nproc_per_node > 1`` training runs under torchrun (through Dagster Pipes when
        ``pipes_context`` is given, so worker logs stream into the run).
        """
        device, precision = self.resolve(log)
        spec, settings, arrays, fingerprint = self._plan(
            train, holdout, columns, seed=seed, precision=precision
        )
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "torch executor: task=%s device=%s precision=%s nproc_per_node=%d train_rows=%d "
            "holdout_rows=%d features=%d checkpoint=%s",
            columns.task,
            device,
            precision,
            self.nproc_per_node,
            len(train),
            len(holdout),
            len(spec.features),
            checkpoint_dir / CHECKPOINT_FILE,
        )
        if self.nproc_per_node > 1:
            self._check_ddp_device(device, self.nproc_per_node)
            job_path = _write_ddp_job(
                spec,
                settings,
                fingerprint,
                train,
                holdout,
                checkpoint_dir=checkpoint_dir,
                device_type=device.type,
            )
            self._launch_ddp(job_path, device, log, pipes_context)
            return collect_job_result(job_path, log=log, log_metric=log_metric)
        with deterministic_mode(device):
            outcome = run_training(
                spec,
                settings,
                arrays[0],
                arrays[1],
                device=device,
                fingerprint=fingerprint,
                checkpoint_path=checkpoint_dir / CHECKPOINT_FILE,
                log=log,
                log_metric=log_metric,
            )
        model = TorchTabularModel(
            spec,
            outcome.state_dict,
            history=outcome.history,
            best_epoch=outcome.best_epoch,
            stop_reason=outcome.stop_reason,
        )
        model.save(checkpoint_dir / "final")
        log.info(
            "torch executor: done (best epoch %d, %s, ran epochs %s)",
            outcome.best_epoch,
            outcome.stop_reason,
            _epochs_text(outcome.epochs_run),
        )
        return model

    def prepare_remote_job(
        self,
        train: pd.DataFrame,
        holdout: pd.DataFrame,
        columns: TabularColumns,
        *,
        seed: int,
        checkpoint_dir: Path,
        device_type: str = "cuda",
    ) -> Path:
        """Write a DDP job (data as Parquet + job.json) for a remote torchrun, e.g. on ECS.

        ``checkpoint_dir`` must be storage that the remote task mounts at the same path (EFS,
        a Kubernetes PVC). Launch with ``ecs_pipes_launch_config(job_path=...)`` and read the
        model back with ``collect_job_result(job_path, ...)``. ``precision`` is resolved by
        the worker on the remote host (its device decides what is supported).
        """
        spec, settings, _, fingerprint = self._plan(
            train, holdout, columns, seed=seed, precision=self.precision
        )
        return _write_ddp_job(
            spec,
            settings,
            fingerprint,
            train,
            holdout,
            checkpoint_dir=Path(checkpoint_dir),
            device_type=device_type,
        )

    @staticmethod
    def _check_ddp_device(device: torch.device, nproc: int) -> None:
        import torch

        if device.type == "mps":
            raise RuntimeError(
                "TorchExecutorResource: DDP (nproc_per_node > 1) is not "
                "supported on MPS; use nproc_per_node=1 or device='cpu'."
            )
        if device.type == "cuda" and torch.cuda.device_count() < nproc:
            raise RuntimeError(
                f"TorchExecutorResource: nproc_per_node={nproc} but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible."
            )

    def _launch_ddp(
        self,
        job_path: Path,
        device: torch.device,
        log: logging.Logger,
        pipes_context: AssetExecutionContext | None,
    ) -> None:
        job = json.loads(job_path.read_text())
        remaining = max(1.0, float(job["settings"]["deadline"] or 0) - time.time())
        nproc = self.nproc_per_node
        command = torchrun_command(job_path, nproc_per_node=nproc, timeout_seconds=remaining)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {
            "PYTHONPATH": os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }
        if device.type == "cpu" and "GLOO_SOCKET_IFNAME" not in os.environ:
            env["GLOO_SOCKET_IFNAME"] = "lo0" if sys.platform == "darwin" else "lo"
        log.info(
            "torch executor: launching %d DDP processes (%s): %s",
            nproc,
            job["backend"],
            shlex.join(command),
        )
        if pipes_context is not None:
            from dagster import PipesSubprocessClient

            PipesSubprocessClient(cwd=package_root).run(
                context=pipes_context,
                command=command,
                env=env,
                extras={"torch_job": str(job_path), "nproc_per_node": nproc},
            )
        else:
            _stream_subprocess(
                command, {**os.environ, **env}, package_root, log, timeout=remaining + 60
            )


def _write_ddp_job(
    spec: TabularSpec,
    settings: TrainSettings,
    fingerprint: str,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    checkpoint_dir: Path,
    device_type: str,
) -> Path:
    """Parquet inputs + job.json under checkpoint_dir/ddp; returns the job path."""
    columns = [*spec.features, spec.label]
    job_dir = checkpoint_dir / "ddp"
    job_dir.mkdir(parents=True, exist_ok=True)
    train[columns].to_parquet(job_dir / "train.parquet", index=False)
    holdout[columns].to_parquet(job_dir / "holdout.parquet", index=False)
    remaining = max(1.0, (settings.deadline or time.time() + 86400) - time.time())
    job = {
        "token": uuid.uuid4().hex,
        "spec": spec.to_json(),
        "settings": dataclasses.asdict(settings),
        "fingerprint": fingerprint,
        "device_type": device_type,
        "backend": "nccl" if device_type == "cuda" else "gloo",
        "process_group_timeout_s": min(remaining, 1800.0),
        "train": str(job_dir / "train.parquet"),
        "holdout": str(job_dir / "holdout.parquet"),
        "checkpoint": str(checkpoint_dir / CHECKPOINT_FILE),
        "result_dir": str(job_dir / "result"),
    }
    job_path = job_dir / "job.json"
    _atomic_write_text(json.dumps(job, indent=1), job_path)
    return job_path


def collect_job_result(
    job_path: str | Path, *, log: logging.Logger, log_metric: MetricLogger
) -> TorchTabularModel:
    """Load the model rank 0 wrote for this job and replay its new epochs into log_metric."""
    job = json.loads(Path(job_path).read_text())
    result_dir = Path(job["result_dir"])
    summary_file = result_dir / "run.json"
    if not summary_file.exists():
        raise RuntimeError(f"the DDP job {job_path} left no result in {result_dir}")
    summary = json.loads(summary_file.read_text())
    if summary.get("token") != job["token"]:
        raise RuntimeError(f"the result in {result_dir} does not belong to job {job_path}")
    model = TorchTabularModel.load(result_dir)
    ran = set(summary["epochs_run"])
    for record in model.history:
        if int(record["epoch"]) in ran:
            for name, value in record.items():
                if name != "epoch":
                    log_metric(name, float(value), int(record["epoch"]))
    model.save(Path(job["checkpoint"]).parent / "final")
    log.info(
        "torch executor: DDP done (world size %s, best epoch %s, %s, ran epochs %s)",
        summary.get("world_size"),
        model.best_epoch,
        model.stop_reason,
        _epochs_text(summary["epochs_run"]),
    )
    return model


def _epochs_text(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none"
    return f"{epochs[0]}..{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Remote GPUs
# --------------------------------------------------------------------------------------------


def ecs_pipes_launch_config(
    *,
    cluster: str,
    task_definition: str,
    container_name: str,
    job_path: str,
    gpus: int = 1,
    cpu: int | None = None,
    memory_mib: int | None = None,
    subnets: Sequence[str] = (),
    security_groups: Sequence[str] = (),
    capacity_provider: str | None = None,
    python: str = "python",
) -> dict[str, Any]:
    """Keyword arguments for ``dagster_aws.pipes.PipesECSClient().run(context=..., **cfg)``.

    The task runs torchrun with ``gpus`` processes (one per GPU, nccl) on ``job_path`` (a job
    written by the executor on storage the task mounts, e.g. EFS). GPUs need the EC2 launch type
    or an EC2 capacity provider (Fargate has no GPUs).
    """
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    override: dict[str, Any] = {
        "name": container_name,
        "command": torchrun_command(
            job_path, nproc_per_node=gpus, python=python, master_port=29500
        ),
        "resourceRequirements": [{"type": "GPU", "value": str(gpus)}],
    }
    if cpu is not None:
        override["cpu"] = int(cpu)
    if memory_mib is not None:
        override["memory"] = int(memory_mib)
    params: dict[str, Any] = {
        "cluster": cluster,
        "taskDefinition": task_definition,
        "count": 1,
        "overrides": {"containerOverrides": [override]},
    }
    if capacity_provider:
        params["capacityProviderStrategy"] = [{"capacityProvider": capacity_provider, "weight": 1}]
    else:
        params["launchType"] = "EC2"
    if subnets:
        params["networkConfiguration"] = {
            "awsvpcConfiguration": {
                "subnets": list(subnets),
                "securityGroups": list(security_groups),
                "assignPublicIp": "DISABLED",
            }
        }
    return {"run_task_params": params, "pipes_container_name": container_name}


def k8s_gpu_tags(
    *,
    gpus: int = 1,
    cpu: str | None = None,
    memory: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerate_gpu_taint: bool = True,
) -> dict[str, Any]:
    """``dagster-k8s/config`` op/asset tag giving the step pod ``gpus`` NVIDIA GPUs.

    Use with the k8s executor or run launcher; inside the pod set ``nproc_per_node=gpus``.
    """
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    limits = {"nvidia.com/gpu": str(gpus)}
    requests: dict[str, str] = {}
    if cpu:
        requests["cpu"] = limits["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    resources: dict[str, Any] = {"limits": limits}
    if requests:
        resources["requests"] = requests
    pod_spec: dict[str, Any] = {}
    if node_selector:
        pod_spec["node_selector"] = dict(node_selector)
    if tolerate_gpu_taint:
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    config: dict[str, Any] = {"container_config": {"resources": resources}}
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {"dagster-k8s/config": config}
