"""The Dagster resource, ``TorchExecutorResource``: its configuration, and ``fit``, which picks
the device and precision, fits the preprocessing, then trains in this process or launches
torchrun DDP (``nproc_per_node > 1``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field

from .checkpoint import CHECKPOINT_FILE, run_fingerprint
from .data import TabularColumns, TabularSpec, fit_spec
from .ddp import check_ddp_device, collect_job_result, write_ddp_job
from .device import DEVICES, PRECISIONS, describe_device, resolve_precision, select_device
from .launch import launch_local_ddp
from .loop import MetricLogger, TrainSettings, epochs_text, run_training
from .model import TorchTabularModel

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from dagster import AssetExecutionContext


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
        arrays = [spec.encode(f) for f in (train, holdout)]
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
            check_ddp_device(device, self.nproc_per_node)
            job_path = write_ddp_job(
                spec,
                settings,
                fingerprint,
                train,
                holdout,
                checkpoint_dir=checkpoint_dir,
                device_type=device.type,
            )
            launch_local_ddp(
                job_path,
                nproc=self.nproc_per_node,
                device=device,
                log=log,
                pipes_context=pipes_context,
            )
            return collect_job_result(job_path, log=log, log_metric=log_metric)
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
        model = TorchTabularModel.from_outcome(spec, outcome)
        model.save(checkpoint_dir / "final")
        log.info(
            "torch executor: done (best epoch %d, %s, ran epochs %s)",
            outcome.best_epoch,
            outcome.stop_reason,
            epochs_text(outcome.epochs_run),
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
        return write_ddp_job(
            spec,
            settings,
            fingerprint,
            train,
            holdout,
            checkpoint_dir=Path(checkpoint_dir),
            device_type=device_type,
        )
