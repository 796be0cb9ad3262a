"""DDP jobs: the executor writes one (``job.json`` + Parquet inputs under ``<checkpoint>/ddp``),
every torchrun rank runs it (``run_ddp_job``, called by ``ddp_worker``), and the executor
collects rank 0's result (``collect_job_result``). How torchrun is started: ``launch``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import CHECKPOINT_FILE, atomic_write_text
from .data import TabularSpec
from .device import resolve_precision
from .loop import MetricLogger, TrainSettings, epochs_text, run_training
from .model import TorchTabularModel

if TYPE_CHECKING:
    import pandas as pd
    import torch


def check_ddp_device(device: torch.device, nproc: int) -> None:
    """Refuse DDP where it cannot run: on MPS, or with fewer visible GPUs than processes."""
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


def write_ddp_job(
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
    atomic_write_text(json.dumps(job, indent=1), job_path)
    return job_path


def run_ddp_job(
    job: dict[str, Any],
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    log: logging.Logger,
    report_epoch: Callable[[dict[str, float]], None] | None = None,
) -> None:
    """One DDP rank's work (called by ``ddp_worker`` after init_process_group)."""
    import pandas as pd

    spec = TabularSpec.from_json(job["spec"])
    settings = TrainSettings(**job["settings"])
    precision, message = resolve_precision(device.type, settings.precision)
    if message and rank == 0:
        log.warning(message)
    settings = dataclasses.replace(settings, precision=precision)
    columns = [*spec.features, spec.label]
    frames = [pd.read_parquet(job[key], columns=columns) for key in ("train", "holdout")]
    arrays = [spec.encode(f) for f in frames]
    metrics: dict[str, float] = {}

    def log_metric(name: str, value: float, step: int) -> None:
        metrics[name] = value
        if report_epoch is not None and len(metrics) == 3:
            report_epoch({"epoch": step, **metrics})
            metrics.clear()

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
    if rank != 0:
        return
    result_dir = Path(job["result_dir"])
    TorchTabularModel.from_outcome(spec, outcome).save(result_dir)
    summary = {
        "token": job["token"],
        "epochs_run": outcome.epochs_run,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "world_size": world_size,
    }
    atomic_write_text(json.dumps(summary), result_dir / "run.json")
    log.info(
        "rank 0 wrote the final model to %s (best epoch %d, %s)",
        result_dir,
        outcome.best_epoch,
        outcome.stop_reason,
    )


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
        epochs_text(summary["epochs_run"]),
    )
    return model
