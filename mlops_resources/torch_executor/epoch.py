"""The steps of one training run on one rank (``TrainingRun``): build and resume, train an
epoch on shuffled global batches, score the holdout, track the best epoch, finish the epoch
(history, checkpoint, log, metrics). ``loop.run_training`` calls them in order."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .checkpoint import Progress, cpu_state, load_checkpoint, restore_checkpoint, save_checkpoint
from .device import autocast_factory
from .metrics import evaluate, loss_function
from .network import build_network

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data import TabularSpec
    from .loop import MetricLogger, TrainSettings


class Scores(NamedTuple):
    """One epoch's losses (as every rank sees them) and the holdout metric (rank 0's)."""

    train_loss: float
    holdout_loss: float
    metric_name: str
    metric_value: float

    def record(self, epoch: int) -> dict[str, float]:
        return {
            "epoch": float(epoch),
            "train_loss": self.train_loss,
            "holdout_loss": self.holdout_loss,
            self.metric_name: self.metric_value,
        }


@dataclasses.dataclass
class TrainingRun:
    """The fixed pieces of one training run on one rank, and the steps of an epoch."""

    spec: TabularSpec
    settings: TrainSettings
    device: torch.device
    net: torch.nn.Module  # the network itself: rank 0 evaluates and checkpoints it
    model: torch.nn.Module  # what trains: net, or net wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    loss_fn: Callable[[Any, Any], Any]
    rank: int
    world_size: int
    fingerprint: str
    checkpoint_path: Path
    log: logging.Logger
    log_metric: MetricLogger

    @classmethod
    def start(
        cls,
        spec: TabularSpec,
        settings: TrainSettings,
        *,
        device: torch.device,
        fingerprint: str,
        checkpoint_path: Path,
        log: logging.Logger,
        log_metric: MetricLogger,
        rank: int,
        world_size: int,
    ) -> tuple[TrainingRun, Progress]:
        """Seed and build, resume from a checkpoint of this run if there is one, then wrap for
        DDP (which broadcasts rank 0's weights)."""
        net, optimizer, scaler = _seeded_setup(spec, settings, device)
        progress = Progress()
        checkpoint = load_checkpoint(checkpoint_path, fingerprint, log, may_rename=rank == 0)
        if checkpoint is not None:
            progress = restore_checkpoint(
                checkpoint, net=net, optimizer=optimizer, scaler=scaler, device=device
            )
            if rank == 0:
                log.info(
                    "resuming from checkpoint %s after epoch %d",
                    checkpoint_path,
                    progress.start_epoch,
                )
        run = cls(
            spec=spec,
            settings=settings,
            device=device,
            net=net,
            model=_wrap_ddp(net, device, world_size),
            optimizer=optimizer,
            scaler=scaler,
            autocast=autocast_factory(device, settings.precision),
            # one process: mean loss per batch. DDP: sum over this rank's shard, scaled per batch
            loss_fn=loss_function(spec.task, "sum" if world_size > 1 else "mean"),
            rank=rank,
            world_size=world_size,
            fingerprint=fingerprint,
            checkpoint_path=checkpoint_path,
            log=log,
            log_metric=log_metric,
        )
        return run, progress

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def to_device(self, arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
        import numpy as np
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays)

    def train_epoch(self, epoch: int, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One pass over this rank's share of every global batch; the summed loss (float64)."""
        import torch

        x_num, x_cat, y = data
        n, batch = len(y), self.settings.batch_size
        self.model.train()
        generator = torch.Generator().manual_seed(self.settings.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=generator).to(self.device)
        batch_losses = []
        for begin in range(0, n, batch):
            idx = perm[begin : begin + batch]
            if self.distributed:
                scale = self.world_size / idx.numel()
                idx = idx[self.rank :: self.world_size]
            with self.autocast():
                out = self.model(x_num[idx], x_cat[idx])
            batch_loss = self.loss_fn(out.float(), y[idx])
            batch_losses.append(batch_loss.detach())
            if self.distributed:  # DDP averages gradients: this gives the global-batch mean
                batch_loss = batch_loss * scale
            self._step(batch_loss)
        losses = torch.stack(batch_losses).double()
        if not self.distributed:  # batch means -> sum over rows (the last batch may be smaller)
            sizes = torch.full_like(losses, float(batch))
            sizes[-1] = n - batch * (len(batch_losses) - 1)
            losses = losses * sizes
        return losses.sum()

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def scores(
        self, train_sum: torch.Tensor, holdout: tuple[torch.Tensor, ...] | None, n: int
    ) -> Scores:
        """Rank 0 scores the holdout; with DDP the train loss is summed over the ranks and
        rank 0's holdout scores are broadcast, so every rank decides early stopping alike."""
        import torch

        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        stats[0] = train_sum
        metric_name = ""
        if self.rank == 0:
            assert holdout is not None
            holdout_loss, metric_name, metric_value = evaluate(
                self.net, self.spec, holdout, self.autocast
            )
            stats[1], stats[2] = holdout_loss, metric_value
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(stats[:1])
            dist.broadcast(stats[1:], src=0)
        return Scores(stats[0].item() / n, stats[1].item(), metric_name, stats[2].item())

    def observe(self, progress: Progress, epoch: int, holdout_loss: float) -> bool:
        """Keep the best epoch (and, on rank 0, its weights); True once patience runs out."""
        if holdout_loss < progress.best_loss:
            progress.best_loss, progress.best_epoch, progress.bad_epochs = holdout_loss, epoch, 0
            progress.best_state = cpu_state(self.net) if self.rank == 0 else None
        else:
            progress.bad_epochs += 1
        return progress.bad_epochs >= self.settings.patience

    def finish_epoch(
        self,
        progress: Progress,
        epoch: int,
        scores: Scores,
        *,
        stopping: bool,
        started: float,
        rows: int,
    ) -> None:
        """Rank 0: record the epoch, checkpoint it (when due), then log it and its metrics.
        The checkpoint comes first: an epoch whose metrics were sent is never trained again."""
        settings = self.settings
        progress.history.append(scores.record(epoch))
        if epoch % settings.checkpoint_every == 0 or stopping or epoch == settings.max_epochs:
            save_checkpoint(
                self.checkpoint_path,
                fingerprint=self.fingerprint,
                epoch=epoch,
                net=self.net,
                optimizer=self.optimizer,
                scaler=self.scaler,
                device=self.device,
                progress=progress,
            )
        seconds = time.perf_counter() - started
        self.log.info(
            "epoch %d/%d train_loss=%.5f holdout_loss=%.5f %s=%.5f best_epoch=%d "
            "(%.2fs, %.0f samples/s)%s",
            epoch,
            settings.max_epochs,
            scores.train_loss,
            scores.holdout_loss,
            scores.metric_name,
            scores.metric_value,
            progress.best_epoch,
            seconds,
            rows / max(seconds, 1e-9),
            " - early stopping" if stopping else "",
        )
        self.log_metric("train_loss", scores.train_loss, epoch)
        self.log_metric("holdout_loss", scores.holdout_loss, epoch)
        self.log_metric(scores.metric_name, scores.metric_value, epoch)


def _seeded_setup(
    spec: TabularSpec, settings: TrainSettings, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """Seed Python, NumPy and torch; then the network, Adam and (fp16 on CUDA) a GradScaler."""
    import random

    import numpy as np
    import torch

    random.seed(settings.seed)
    np.random.seed(settings.seed % 2**32)
    torch.manual_seed(settings.seed)
    net = build_network(spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    use_scaler = settings.precision == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
    return net, optimizer, scaler


def _wrap_ddp(net: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    if world_size <= 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
