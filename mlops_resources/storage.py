"""Local state and asset storage: where everything the suite writes lives.

All local state sits under one folder, MLOPS_HOME (default: `.mlops_home` in the working
directory): the Dagster instance (unless DAGSTER_HOME is set), MLflow's database and artifacts,
the Feast registry and stores, asset values, and the demo data.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableIOManagerFactory, ConfigurableResource, FilesystemIOManager
from pydantic import Field

TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def disable_telemetry() -> None:
    """Keep the libraries from phoning home or writing outside MLOPS_HOME (user may override)."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


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


def asset_io_manager(base_dir: str | None = None) -> ConfigurableIOManagerFactory:
    """The IO manager for asset values: local files under MLOPS_HOME/storage by default."""
    return FilesystemIOManager(base_dir=base_dir or str(mlops_home() / "storage"))


class ReportStoreResource(ConfigurableResource):
    """Where rendered reports (Evidently HTML, model cards) are written, keyed by a relative
    path such as `drift_report/<spec>/<partition>.html`."""

    base_uri: str = Field(
        default="", description="Folder for reports; default $MLOPS_HOME/reports."
    )

    @property
    def root(self) -> Path:
        return Path(expand_home(self.base_uri)) if self.base_uri else mlops_home() / "reports"

    def save(self, key: str, content: str) -> str:
        """Write `content` under `key` atomically and return where it lives (a path or URI)."""
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"report key {key!r} escapes the report root {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(content, encoding="utf-8")
        partial.replace(target)
        return str(target)
