"""Reproduction: retrain a registered version from its recorded inputs (spec, training set,
Torch executor settings, seed) and compare its holdout metrics with the recorded ones."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.keys import CODE_VERSION_TAG, DATA_VERSION_TAG, GIT_COMMIT_TAG
from mlops_assets.ml.dataset import content_hash, split
from mlops_assets.ml.evaluation import evaluate
from mlops_assets.ml.governance.lineage import (
    ARTIFACT_DIR,
    SPEC_FILE,
    TORCH_SETTINGS_FILE,
    TRAINING_SET_FILE,
    code_version,
)
from mlops_assets.ml.model_kinds import model_kind, train_model
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

    from mlops_resources.mlflow_tracking import MLflowResource

    Frame = pd.DataFrame


class ReproduceError(RuntimeError):
    """A model version whose recorded inputs are missing or do not match their versions."""


def reproduce_version(
    mlflow: MLflowResource, name: str, version: str, tolerance: float = 1e-9
) -> dict[str, Any]:
    """Retrain a version from its recorded inputs (the logged spec and training set, checked
    against the recorded data version, and for torch_mlp the Torch executor's settings) with
    the recorded seed, and compare holdout metrics."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ReproduceError(f"{name} v{version} does not exist in the registry") from exc
    run = client.get_run(found.run_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(client.download_artifacts(found.run_id, ARTIFACT_DIR, folder))
        except (MlflowException, OSError) as exc:
            raise ReproduceError(
                f"{name} v{version}: no recorded inputs in run {found.run_id} ({ARTIFACT_DIR}/); "
                "it was trained before governance was recorded"
            ) from exc
        spec = PipelineSpec.model_validate(json.loads((local / SPEC_FILE).read_text()))
        training_set = pd.read_parquet(local / TRAINING_SET_FILE)
        torch_file = local / TORCH_SETTINGS_FILE
        torch_settings = json.loads(torch_file.read_text()) if torch_file.is_file() else None
    if model_kind(spec).uses_executor and torch_settings is None:
        raise ReproduceError(
            f"{name} v{version}: no recorded Torch executor settings ({ARTIFACT_DIR}/"
            f"{TORCH_SETTINGS_FILE}); it was trained before they were recorded"
        )
    recorded_version = found.tags.get(DATA_VERSION_TAG)
    actual_version = content_hash(training_set)
    if recorded_version != actual_version:
        raise ReproduceError(
            f"{name} v{version}: the logged training set hashes to {actual_version}, but the "
            f"version records data version {recorded_version}"
        )
    model = retrain(spec, training_set, torch_settings)
    metrics = evaluate(model, *split(training_set, spec, "holdout"), spec)
    rows = []
    for metric, value in sorted(metrics.items()):
        recorded = run.data.metrics.get(f"holdout_{metric}")  # torch also logs holdout_loss
        if recorded is not None:
            rows.append(
                {
                    "metric": metric,
                    "recorded": recorded,
                    "reproduced": value,
                    "match": abs(value - recorded) <= tolerance,
                }
            )
    return {
        "model": name,
        "version": str(version),
        "data_version": actual_version,
        "seed": spec.model.seed,
        "code_version": found.tags.get(CODE_VERSION_TAG),
        # The training stage's code version today, for the recorded spec: a difference explains
        # a mismatch (the code changed since the version was trained).
        "code_version_now": code_version(spec, "candidate_model"),
        "git_commit": found.tags.get(GIT_COMMIT_TAG),
        "metrics": rows,
        "match": bool(rows) and all(r["match"] for r in rows),
    }


def retrain(spec: PipelineSpec, training_set: Frame, torch_settings: dict[str, Any] | None) -> Any:
    """Fit the spec's model kind again as candidate_model did; torch_mlp with the recorded
    executor settings, from an empty checkpoint folder."""
    import logging

    from mlops_resources.torch_executor import TorchExecutorResource

    executor = TorchExecutorResource(**(torch_settings or {}))
    if model_kind(spec).uses_executor:
        try:
            executor.resolve()
        except RuntimeError as exc:  # e.g. trained on cuda, and this machine has no GPU
            raise ReproduceError(
                f"{spec.model_name} was trained on {executor.device}: reproduce it on a "
                f"machine that has one ({exc})"
            ) from exc
    with tempfile.TemporaryDirectory() as checkpoints:
        return train_model(
            spec,
            training_set,
            executor,
            checkpoint_dir=Path(checkpoints),
            log=logging.getLogger("mlops_assets.reproduce"),
            log_metric=lambda name, value, step: None,
        )
