"""The per-process entry point torchrun starts for DDP training (Dagster Pipes client side).

    python -m torch.distributed.run --nproc-per-node N \
        -m mlops_resources.torch_executor.ddp_worker --job <checkpoint_dir>/ddp/job.json

Rank 0 opens Dagster Pipes when launched through a Pipes client: its log lines stream into the
Dagster run and every epoch's metrics are reported as a Pipes custom message. Other ranks log
warnings to stderr only. The job itself is ``ddp.run_ddp_job``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys
from typing import Any


def _stream_logger(rank: int) -> logging.Logger:
    logger = logging.getLogger(f"mlops.torch_ddp_worker.rank{rank}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger


def main(argv: list[str] | None = None) -> int:
    """Join the process group, train this rank's share, leave the group."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", required=True, help="job.json written by TorchExecutorResource")
    args, _ = parser.parse_known_args(argv)
    with open(args.job) as handle:
        job: dict[str, Any] = json.load(handle)

    import torch
    import torch.distributed as dist
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from mlops_resources.torch_executor.ddp import run_ddp_job

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_pipes = rank == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process()
    with open_dagster_pipes() if use_pipes else contextlib.nullcontext() as pipes:
        log = pipes.log if pipes is not None else _stream_logger(rank)
        if job["device_type"] == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        dist.init_process_group(
            backend=job["backend"],
            timeout=datetime.timedelta(seconds=float(job["process_group_timeout_s"])),
        )
        if rank == 0:
            log.info(
                "DDP worker: world_size=%d backend=%s device=%s torch=%s",
                world_size,
                job["backend"],
                device,
                torch.__version__,
            )
        report = pipes.report_custom_message if pipes is not None else None
        try:
            run_ddp_job(
                job, rank=rank, world_size=world_size, device=device, log=log, report_epoch=report
            )
        finally:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
