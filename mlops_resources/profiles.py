"""Profiles: which backends the resources talk to, chosen by $MLOPS_PROFILE.

- ``local`` (default): the embedded defaults, everything under $MLOPS_HOME, no servers.
- ``production``: asset values and reports in S3 (dagster-aws), MLflow through a tracking
  server over HTTP, Feast's online store in Redis. Settings come from environment variables
  (PRODUCTION_ENV); secrets are passed as dagster EnvVars, so resource config, metadata and logs
  show the variable's name, never its value.

The Dagster instance itself (runs, event logs, schedules on PostgreSQL) is configured in
$DAGSTER_HOME/dagster.yaml, not here: see deploy/production/dagster.yaml.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import EnvVar

from mlops_resources.drift_detection import EvidentlyResource
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.spark import spark_resources
from mlops_resources.storage import ReportStoreResource, asset_io_manager
from mlops_resources.torch_executor import TorchExecutorResource
from mlops_resources.validation import GreatExpectationsResource

PROFILE_ENV = "MLOPS_PROFILE"
PROFILES = ("local", "production")

# Environment variables of the production profile: name -> (required, what it is).
PRODUCTION_ENV: dict[str, tuple[bool, str]] = {
    "MLOPS_S3_BUCKET": (True, "S3 bucket for asset values (dagster/) and reports (reports/)"),
    "MLFLOW_TRACKING_URI": (True, "MLflow tracking server, e.g. http://mlflow.internal:5000"),
    "MLOPS_MLFLOW_UI_URL": (False, "MLflow UI base for links (default: MLFLOW_TRACKING_URI)"),
    "MLOPS_REDIS_HOST": (True, "Redis host of the Feast online store"),
    "MLOPS_REDIS_PORT": (False, "Redis port (default 6379)"),
    "MLOPS_REDIS_PASSWORD": (False, "Redis password (secret, read as an EnvVar)"),
    "AWS_ENDPOINT_URL": (False, "S3-compatible endpoint (unset for AWS S3)"),
    "AWS_DEFAULT_REGION": (False, "AWS region"),
    "AWS_ACCESS_KEY_ID": (False, "S3 key id (secret; unset: the default AWS chain, e.g. a role)"),
    "AWS_SECRET_ACCESS_KEY": (False, "S3 secret key (secret)"),
}


class ProfileError(ValueError):
    """An unknown profile, or a required setting missing from the environment."""


def active_profile(profile: str | None = None) -> str:
    """`profile`, else $MLOPS_PROFILE, else "local"; unknown names raise ProfileError."""
    name = (profile or os.environ.get(PROFILE_ENV) or "local").strip().lower()
    if name not in PROFILES:
        raise ProfileError(f"{PROFILE_ENV}={name!r}: unknown profile; choose one of {PROFILES}")
    return name


def profile_resources(profile: str | None = None) -> dict[str, Any]:
    """The resources of a profile, keyed as the assets expect them. Only the backends differ;
    the in-process tools (GX, the Torch executor, Evidently) are the same everywhere."""
    if active_profile(profile) == "production":
        backends = production_backends()
    else:
        backends = {
            "io_manager": asset_io_manager(),
            "mlflow": MLflowResource(),
            "feast": FeastResource(),
            "reports": ReportStoreResource(),
        }
    return {
        **backends,
        "gx": GreatExpectationsResource(),
        "torch_executor": TorchExecutorResource(),
        "evidently": EvidentlyResource(),
        **spark_resources(),  # engine: spark (pyspark is imported only when it runs)
    }


def _setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    required, what = PRODUCTION_ENV[name]
    if required and not value:
        raise ProfileError(
            f"{PROFILE_ENV}=production needs {name} ({what}); see docs/deployment.md"
        )
    return value


def production_backends() -> dict[str, Any]:
    """S3 + MLflow server + Redis, from the environment (secrets as EnvVars)."""
    bucket = _setting("MLOPS_S3_BUCKET")
    tracking_uri = _setting("MLFLOW_TRACKING_URI")
    redis_address = f"{_setting('MLOPS_REDIS_HOST')}:{_setting('MLOPS_REDIS_PORT') or 6379}"
    return {
        "io_manager": asset_io_manager(s3_bucket=bucket, s3_prefix="dagster"),
        "mlflow": MLflowResource(
            tracking_uri=tracking_uri,
            ui_url=(_setting("MLOPS_MLFLOW_UI_URL") or tracking_uri).rstrip("/"),
        ),
        "feast": FeastResource(
            online_store={"type": "redis", "connection_string": redis_address},
            online_store_password=EnvVar("MLOPS_REDIS_PASSWORD")
            if _setting("MLOPS_REDIS_PASSWORD")
            else "",
        ),
        "reports": ReportStoreResource(base_uri=f"s3://{bucket}/reports"),
    }
