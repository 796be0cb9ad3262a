"""Device and precision: which device a run uses (CPU, CUDA, MPS), which autocast precision
that device supports, what the device is called, and deterministic algorithms while training."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


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

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def autocast_factory(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A callable giving a fresh autocast context per forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(_autocast, device, precision)


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
