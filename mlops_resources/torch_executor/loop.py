"""The training loop, ``run_training``: shared by the in-process path and by every DDP rank.

One run: seed and build the network, resume from a matching checkpoint, then per epoch train
on shuffled batches, score the holdout, track the best epoch (early stopping), checkpoint and
report. The steps are the methods of ``epoch.TrainingRun``; this file holds their order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import cpu_state
from .device import deterministic_mode
from .epoch import TrainingRun

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data import TabularSpec

MetricLogger = Callable[[str, float, int], None]


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


def epochs_text(epochs: Sequence[int]) -> str:
    """'none', '4' or '4..6': the epochs a run trained, for log lines."""
    if not epochs:
        return "none"
    return f"{epochs[0]}..{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])


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
    resumed run continues exactly where the checkpoint left off. Runs under
    ``deterministic_mode``.
    """
    with deterministic_mode(device):  # restored afterwards
        run, progress = TrainingRun.start(
            spec,
            settings,
            device=device,
            fingerprint=fingerprint,
            checkpoint_path=checkpoint_path,
            log=log,
            log_metric=log_metric,
            rank=rank,
            world_size=world_size,
        )
        data = run.to_device(train)
        holdout_data = run.to_device(holdout) if rank == 0 else None
        n = len(data[2])
        if n == 0 or len(holdout[2]) == 0:
            raise ValueError("train and holdout must both contain rows")
        epochs_run: list[int] = []
        stop_reason = "early_stopping" if progress.bad_epochs >= settings.patience else "max_epochs"

        epoch = progress.start_epoch
        while epoch < settings.max_epochs and progress.bad_epochs < settings.patience:
            if settings.deadline is not None and time.time() > settings.deadline:
                raise TimeoutError(
                    f"training deadline passed before epoch {epoch + 1}; "
                    "the last checkpoint can be resumed"
                )
            epoch += 1
            started = time.perf_counter()
            scores = run.scores(run.train_epoch(epoch, data), holdout_data, n)
            stopping = run.observe(progress, epoch, scores.holdout_loss)
            if stopping:
                stop_reason = "early_stopping"
            epochs_run.append(epoch)
            if rank == 0:
                run.finish_epoch(
                    progress, epoch, scores, stopping=stopping, started=started, rows=n
                )

        best_state = progress.best_state
        return TrainOutcome(
            state_dict=best_state if best_state is not None else cpu_state(run.net),
            history=progress.history,
            best_epoch=progress.best_epoch,
            resumed_from_epoch=progress.start_epoch,
            epochs_run=epochs_run,
            stop_reason=stop_reason,
        )
