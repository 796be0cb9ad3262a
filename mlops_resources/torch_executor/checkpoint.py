"""Checkpoints and crash-safe files: what a checkpoint holds, when it may be resumed (its
fingerprint), and atomic writes (temp file, fsync, ``os.replace``) for every file we leave."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data import TabularSpec
    from .loop import TrainSettings

CHECKPOINT_FORMAT = "mlops-torch-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclasses.dataclass
class Progress:
    """Where a run stands after an epoch: what a checkpoint restores besides weights and RNG."""

    start_epoch: int = 0  # the epoch the run resumed after (0 = fresh start)
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best holdout loss (early stopping)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_state: dict[str, Any] | None = None  # weights of the best epoch (rank 0 only)


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


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsync, then rename over ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(text: str, path: Path) -> None:
    """Write to a temp file, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def cpu_state(module: torch.nn.Module) -> dict[str, Any]:
    """A copy of a module's weights on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_checkpoint(
    path: Path, fingerprint: str, log: logging.Logger, *, may_rename: bool
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run; one of another run is set aside
    as ``<name>.stale-<time>.pt`` (by the rank that ``may_rename``), never deleted."""
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


def restore_checkpoint(
    checkpoint: dict[str, Any],
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> Progress:
    """Load weights, optimizer, scaler and RNG state into the run; return its progress."""
    import torch

    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng_torch"])
    if device.type == "cuda" and checkpoint.get("rng_cuda"):
        torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
    return Progress(
        start_epoch=int(checkpoint["epoch"]),
        best_loss=float(checkpoint["best_loss"]),
        best_epoch=int(checkpoint["best_epoch"]),
        bad_epochs=int(checkpoint["bad_epochs"]),
        history=list(checkpoint["history"]),
        best_state=checkpoint["best_state"],
    )


def save_checkpoint(
    path: Path,
    *,
    fingerprint: str,
    epoch: int,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    progress: Progress,
) -> None:
    """Everything ``restore_checkpoint`` needs to continue after ``epoch``, written atomically."""
    import torch

    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": cpu_state(net),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "best_state": progress.best_state,
            "best_loss": progress.best_loss,
            "best_epoch": progress.best_epoch,
            "bad_epochs": progress.bad_epochs,
            "history": progress.history,
        },
        path,
    )
