"""Starting torchrun: the command line, a local launch (through Dagster Pipes or a plain
subprocess), and the settings for remote GPUs (ECS through Pipes, Kubernetes pod tags)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from dagster import AssetExecutionContext

WORKER_MODULE = "mlops_resources.torch_executor.ddp_worker"  # what torchrun runs on every rank
# The folder holding mlops_resources/: put on the workers' PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


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
    """The torchrun command line that runs the DDP worker (``WORKER_MODULE``) on one node."""
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
        WORKER_MODULE,
        "--job",
        str(job_path),
    ]
    timeout_bin = shutil.which("timeout")
    if timeout_seconds and timeout_bin:
        command = [timeout_bin, "--kill-after=30", str(max(1, int(timeout_seconds))), *command]
    return command


def launch_local_ddp(
    job_path: Path,
    *,
    nproc: int,
    device: torch.device,
    log: logging.Logger,
    pipes_context: AssetExecutionContext | None,
) -> None:
    """Run torchrun on this host until the job is done (or its deadline passes)."""
    job = json.loads(job_path.read_text())
    remaining = max(1.0, float(job["settings"]["deadline"] or 0) - time.time())
    command = torchrun_command(job_path, nproc_per_node=nproc, timeout_seconds=remaining)
    env = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
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

        PipesSubprocessClient(cwd=PACKAGE_ROOT).run(
            context=pipes_context,
            command=command,
            env=env,
            extras={"torch_job": str(job_path), "nproc_per_node": nproc},
        )
    else:
        _stream_subprocess(
            command, {**os.environ, **env}, PACKAGE_ROOT, log, timeout=remaining + 60
        )


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
