"""Local state and asset storage: where everything the suite writes lives.

All local state sits under one folder, MLOPS_HOME (default: `.mlops_home` in the working
directory): the Dagster instance (unless DAGSTER_HOME is set), MLflow's database and artifacts,
the Feast registry and stores, asset values, and the demo data. The production profile
(mlops_resources/profiles.py) moves asset values and reports to S3 instead.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from dagster import ConfigurableIOManagerFactory, ConfigurableResource, EnvVar
from pydantic import Field

TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}

# S3Resource fields that hold secrets, and the environment variables they are read from.
S3_SECRET_ENV = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
}


# Forced in every process the suite runs in, whatever the environment says: MLflow must never
# unpickle a model artifact (the suite loads its own formats; see model_loading.py).
FORCED_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


def disable_telemetry() -> None:
    """Keep the libraries from phoning home or writing outside MLOPS_HOME (user may override),
    and switch MLflow's pickle deserialization off (user may not)."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.update(FORCED_ENV)


def mlops_home() -> Path:
    """The folder that holds all local state: $MLOPS_HOME or ./.mlops_home."""
    return Path(os.environ.get("MLOPS_HOME") or Path.cwd() / ".mlops_home").resolve()


def dagster_home() -> Path:
    """$DAGSTER_HOME when set, else MLOPS_HOME/dagster."""
    return Path(os.environ.get("DAGSTER_HOME") or mlops_home() / "dagster").resolve()


def expand_home(path: str) -> str:
    """Expand $MLOPS_HOME (with its default) and other environment variables in a path."""
    home = str(mlops_home())
    return os.path.expandvars(path.replace("${MLOPS_HOME}", home).replace("$MLOPS_HOME", home))


def asset_io_manager(
    base_dir: str | None = None, *, s3_bucket: str | None = None, s3_prefix: str = "dagster"
) -> ConfigurableIOManagerFactory:
    """The IO manager for asset values (mlops_resources/io_manager.py): Parquet for tables and
    JSON for plain values, written atomically per run, in a local folder (MLOPS_HOME/storage by
    default) or in `s3_bucket` under `s3_prefix` through the same class.

    S3 settings come from the environment only: AWS_ENDPOINT_URL (an S3-compatible server),
    AWS_DEFAULT_REGION, and credentials through the default AWS chain (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, a profile or an IAM role); no secret is part of the resource config.
    """
    from mlops_resources.io_manager import AssetIOManager

    if not s3_bucket:
        return AssetIOManager(base_path=base_dir or "")
    return AssetIOManager(base_path=f"s3://{s3_bucket}/{s3_prefix.strip('/')}".rstrip("/"))


def s3_resource() -> ConfigurableResource:
    """dagster-aws S3Resource configured from the environment; secrets stay EnvVars."""
    from dagster_aws.s3 import S3Resource

    settings: dict[str, Any] = {
        field: EnvVar(name) for field, name in S3_SECRET_ENV.items() if os.environ.get(name)
    }
    if os.environ.get("AWS_ENDPOINT_URL"):
        settings["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_DEFAULT_REGION"):
        settings["region_name"] = os.environ["AWS_DEFAULT_REGION"]
    return S3Resource(**settings)


class ReportStoreResource(ConfigurableResource):
    """Where rendered reports (Evidently HTML, model cards) are written, keyed by a relative
    path such as `drift_report/<spec>/<partition>.html`: a local folder, or an S3 prefix
    (`s3://bucket/prefix`, written with boto3; endpoint and credentials from the environment)."""

    base_uri: str = Field(
        default="",
        description="Folder or s3://bucket/prefix for reports; default $MLOPS_HOME/reports.",
    )

    @property
    def root(self) -> Path:
        return Path(expand_home(self.base_uri)) if self.base_uri else mlops_home() / "reports"

    def save(self, key: str, content: str, *, run_id: str = "") -> str:
        """Write `content` under `key` atomically and return where it lives (a path or URI).

        Locally the report is written to `.<name>.<run_id>.partial` beside its final name and
        renamed over it: two runs writing the same report (the daemon's concurrent runs, two
        CLIs) each have their own partial file, and a reader sees one whole report or the
        other. Without a run id, a random one is used."""
        if self.base_uri.startswith("s3://"):
            return self._save_s3(key, content)
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"report key {key!r} escapes the report root {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{run_id or uuid.uuid4().hex}.partial")
        try:
            partial.write_text(content, encoding="utf-8")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return str(target)

    def _save_s3(self, key: str, content: str) -> str:
        """One PutObject (atomic in S3: readers see the old or the new report, never half)."""
        import boto3

        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
            raise ValueError(f"report key {key!r} escapes the report root {self.base_uri}")
        bucket, _, prefix = self.base_uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"report base_uri {self.base_uri!r} names no bucket")
        object_key = "/".join([*PurePosixPath(prefix).parts, *parts])
        content_type = "text/html" if key.endswith(".html") else "text/plain"
        boto3.client("s3").put_object(
            Bucket=bucket,
            Key=object_key,
            Body=content.encode("utf-8"),
            ContentType=f"{content_type}; charset=utf-8",
        )
        return f"s3://{bucket}/{object_key}"
