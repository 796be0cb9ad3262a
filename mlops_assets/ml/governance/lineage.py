"""Lineage: what a model version was built from. The governance artifact files, the version
tags of its data and code versions, the spec keys and source files of each asset's code version
(code_version), and the git commit."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.keys import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    GIT_COMMIT_TAG,
    SPARK_ASSETS,
    SPEC_HASH_TAG,
)
from mlops_assets.ml.model_kinds import TORCH_KIND
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

    Frame = pd.DataFrame


ARTIFACT_DIR = "governance"
CARD_FILE = "model_card.md"
TRAINING_SET_FILE = "training_set.parquet"
SPEC_FILE = "spec.json"
REPORT_FILE = "report.json"
TORCH_SETTINGS_FILE = "torch_executor.json"

ROOT = Path(__file__).resolve().parents[3]

# The code each asset runs besides its own module: the suite modules (or packages) it calls. A
# change to any of them gives the asset a new code version (see code_modules).
_TRAINING = (
    "mlops_assets.training",
    "mlops_assets.governance",
    "mlops_assets.ml.dataset",
    "mlops_assets.ml.evaluation",
    "mlops_assets.ml.estimators",
    "mlops_assets.ml.model_kinds",
    "mlops_assets.ml.governance",
    "mlops_resources.mlflow_tracking",
    "mlops_resources.model_loading",
)
_FEATURES = (
    "mlops_assets.features",
    "mlops_assets.labels",
    "mlops_assets.ml.dataset",
    "mlops_assets.ml.windows",
    "mlops_resources.feast_store",
)
_MONITORING = (
    "mlops_assets.monitoring",
    "mlops_assets.labels",
    "mlops_assets.online",
    "mlops_assets.ml.evaluation",
    "mlops_assets.ml.windows",
    "mlops_resources.mlflow_tracking",
    "mlops_resources.model_loading",
)
CODE_BY_ASSET: dict[str, tuple[str, ...]] = {
    "raw_data": ("mlops_assets.data", "mlops_assets.ml.dataset", "mlops_resources.storage"),
    "validated_data": (
        "mlops_assets.validation",
        "mlops_assets.labels",
        "mlops_assets.ml.dataset",
        "mlops_resources.validation",
    ),
    "features": _FEATURES,
    "online_features": _FEATURES,
    "training_set": _FEATURES,
    "candidate_model": _TRAINING,
    "model_promotion": (
        "mlops_assets.promotion",
        "mlops_assets.alias_moves",
        "mlops_assets.governance",
        "mlops_assets.ml.dataset",
        "mlops_assets.ml.evaluation",
        "mlops_assets.ml.gate",
        "mlops_assets.ml.governance",
        "mlops_resources.mlflow_tracking",
        "mlops_resources.model_loading",
    ),
    "batch_predictions": (
        "mlops_assets.inference",
        "mlops_assets.ml.evaluation",
        "mlops_resources.feast_store",
        "mlops_resources.mlflow_tracking",
        "mlops_resources.model_loading",
    ),
    "drift_report": (
        "mlops_assets.drift",
        *_MONITORING,
        "mlops_resources.drift_detection",
        "mlops_resources.storage",
    ),
    "model_performance": _MONITORING,
    "online_predictions": ("mlops_assets.serving.request_log",),
}

# The spec keys each stage reads: a change to them (or to the stage's module) gives the asset a
# new code version, so Dagster shows it and everything downstream as stale. Unlisted assets use
# the whole spec.
SPEC_KEYS_BY_ASSET: dict[str, tuple[str, ...]] = {
    "raw_data": ("source", "timestamp", "partitions", "engine"),
    "validated_data": (
        "entity_key",
        "timestamp",
        "label",
        "task",
        "classes",
        "features",
        "allow_extra_columns",
        "expectations",
        "labels",
        "engine",
    ),
    "features": ("entity_key", "timestamp", "label", "labels", "features", "feature_ttl_days"),
    "online_features": ("entity_key", "timestamp", "features", "online_features", "engine"),
    "training_set": (
        "entity_key",
        "timestamp",
        "label",
        "features",
        "feature_ttl_days",
        "labels",
        "model.training_window_days",
        "model.holdout_days",
        "model.window",
        "monitoring.performance.label_delay_days",
        "engine",
    ),
    "candidate_model": ("label", "task", "classes", "features", "model", "governance"),
    "model_promotion": ("task", "classes", "gate", "governance"),
    "batch_predictions": ("entity_key", "timestamp", "features", "task", "classes", "engine"),
    "online_predictions": ("entity_key", "features", "task", "classes", "serving"),
}


def spec_subset(spec: PipelineSpec, keys: tuple[str, ...] | None) -> dict[str, Any]:
    """The spec values under `keys` (dotted paths into sections); all of it when None."""
    dumped = spec.model_dump(mode="json")
    if keys is None:
        return dumped
    subset = {}
    for key in keys:
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        subset[key] = value
    return subset


def code_modules(spec: PipelineSpec, asset_name: str) -> list[str]:
    """The suite modules (a package: all its files) whose source an asset's code version hashes:
    its own module and the suite code it calls (CODE_BY_ASSET); for a torch_mlp
    candidate_model, also the Torch executor package."""
    modules = list(CODE_BY_ASSET.get(asset_name, ()))
    if asset_name == "candidate_model" and spec.model.kind == TORCH_KIND:
        modules.append("mlops_resources.torch_executor")
    if spec.engine == "spark" and asset_name in SPARK_ASSETS:
        modules += ["mlops_assets.spark_engine", "mlops_resources.spark"]
    return modules


def source_files(modules: list[str]) -> list[Path]:
    """The .py files of the modules (a package: every .py file under it), in a stable order."""
    files: set[Path] = set()
    for module in modules:
        path = ROOT.joinpath(*module.split("."))
        if path.with_suffix(".py").is_file():
            files.add(path.with_suffix(".py"))
        elif path.is_dir():
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            raise ValueError(f"code version of an asset: no module {module} under {ROOT}")
    return sorted(files)


def code_version(spec: PipelineSpec, asset_name: str, own_module: str | None = None) -> str:
    """Hash of the source of the code the asset runs (its module `own_module` and
    code_modules(spec, asset_name)) and of the spec keys the asset reads."""
    modules = [*([own_module] if own_module else []), *code_modules(spec, asset_name)]
    digest = hashlib.sha256()
    for path in source_files(modules):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    keys = SPEC_KEYS_BY_ASSET.get(asset_name)
    digest.update(json.dumps(spec_subset(spec, keys), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def git_commit() -> str:
    """The commit of the checked-out code (with `+dirty` for local changes), else `unknown`."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def lineage_tags(report: dict[str, Any]) -> dict[str, str]:
    """Model version tags naming what the version was built from."""
    found = report["lineage"]
    return {
        DATA_VERSION_TAG: found["data_versions"]["training_set"],
        CODE_VERSION_TAG: str(found["code_version"]),
        SPEC_HASH_TAG: found["spec_hash"],
        GIT_COMMIT_TAG: found["git_commit"],
    }
