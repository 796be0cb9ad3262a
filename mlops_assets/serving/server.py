"""`python -m mlops_assets serve`: the chosen pipelines behind one uvicorn server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.serving.batching import DEFAULT_MAX_ROWS, DEFAULT_WAIT_SECONDS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mlops_assets.spec import PipelineSpec

# One thread per model call: the server answers many small requests at once, and OpenMP's
# thread team (scikit-learn's histogram GBM) on a busy 2-core machine made a single-row
# prediction ~7x slower here (90 ms instead of 13 ms). Read when the libraries load, so set
# before anything imports numpy or scikit-learn; an explicit setting is kept.
SINGLE_THREADED_MATH = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def serving_specs(config: str | None, model: str | None, project: Path) -> list[PipelineSpec]:
    """The pipelines to serve: the one --config / --model / $MLOPS_CONFIG names, else every
    pipeline of the Dagster project in `project`, else the bundled demo."""
    from mlops_assets.cli import choose_spec
    from mlops_assets.project import CONFIG_ENV, project_specs
    from mlops_assets.spec import load_spec

    if config or model or os.environ.get(CONFIG_ENV):
        return [choose_spec(config, model, project)]
    specs = project_specs(project)
    return [specs[name] for name in sorted(specs)] or [load_spec()]


def build_app(
    specs: list[PipelineSpec],
    resources: dict[str, Any] | None = None,
    batch_max_rows: int = DEFAULT_MAX_ROWS,
    batch_wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> FastAPI:
    """The application for `specs`, with the active profile's MLflow and Feast resources
    (`resources` override them by key), their EnvVars resolved; concurrent requests of a
    pipeline are scored in batches of up to `batch_max_rows` rows (serving.batching)."""
    from mlops_assets.serving.app import create_app
    from mlops_assets.serving.metrics import ServingMetrics
    from mlops_assets.serving.service import PipelineService
    from mlops_resources.profiles import profile_resources

    import_libraries()
    resources = {**profile_resources(), **(resources or {})}
    mlflow = resources["mlflow"].process_config_and_initialize()
    feast = resources["feast"].process_config_and_initialize()
    metrics = ServingMetrics()
    services = {
        spec.name: PipelineService(spec, mlflow, feast, metrics, batch_max_rows, batch_wait_seconds)
        for spec in specs
    }
    return create_app(services, metrics)


def import_libraries() -> None:
    """Import what the server's threads use, here, in one thread: two threads importing feast
    for the first time at once failed with a circular import ("cannot import name 'DataSource'
    from partially initialized module"), seen on the production profile."""
    import feast  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import skops.io  # noqa: F401


def serve_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM (then the request logs are flushed)."""
    for key, value in SINGLE_THREADED_MATH.items():
        os.environ.setdefault(key, value)
    from mlops_assets.cli import prepare_dagster_home
    from mlops_assets.spec import SpecError, check_model_params

    try:
        specs = serving_specs(args.config, args.model, Path.cwd())
        for spec in specs:
            check_model_params(spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    import uvicorn

    prepare_dagster_home()  # the canary's stop is a Dagster run on this instance
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = build_app(
        specs, batch_max_rows=args.batch_max_rows, batch_wait_seconds=args.batch_wait_ms / 1000
    )
    names = ", ".join(spec.name for spec in specs)
    print(f"serving {names} on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--batch-max-rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS,
        help="most entity rows of concurrent requests scored together (default "
        f"{DEFAULT_MAX_ROWS}; a larger request is scored alone)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=non_negative_float,
        default=DEFAULT_WAIT_SECONDS * 1000,
        help="how long a request waits for others to be scored with (default 0: under load "
        "requests arriving while a batch is scored form the next one)",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value
