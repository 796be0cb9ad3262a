"""Wiring: the asset graph and resources for one pipeline spec."""

from __future__ import annotations

from typing import Any

from dagster import AssetSelection, Definitions, define_asset_job

from mlops_assets.data import build_raw_data
from mlops_assets.features import build_features, build_training_set
from mlops_assets.inference import build_batch_predictions
from mlops_assets.promotion import build_model_promotion
from mlops_assets.spec import PipelineSpec
from mlops_assets.training import build_candidate_model
from mlops_assets.validation import build_validated_data
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.storage import asset_io_manager, disable_telemetry
from mlops_resources.torch_executor import TorchExecutorResource
from mlops_resources.validation import GreatExpectationsResource

LIFECYCLE_JOB = "lifecycle"
INGEST_JOB = "ingest"
INGEST_ASSETS = ["raw_data", "validated_data", "features"]


def build_assets(spec: PipelineSpec) -> list[Any]:
    """Every lifecycle asset for the spec, in graph order."""
    return [
        build_raw_data(spec),
        build_validated_data(spec),
        build_features(spec),
        build_training_set(spec),
        build_candidate_model(spec),
        build_model_promotion(spec),
        build_batch_predictions(spec),
    ]


def default_resources() -> dict[str, Any]:
    """Embedded defaults: everything under $MLOPS_HOME, no servers."""
    return {
        "io_manager": asset_io_manager(),
        "mlflow": MLflowResource(),
        "feast": FeastResource(),
        "gx": GreatExpectationsResource(),
        "torch_executor": TorchExecutorResource(),
    }


def build_definitions(spec: PipelineSpec, resources: dict[str, Any] | None = None) -> Definitions:
    disable_telemetry()
    return Definitions(
        assets=build_assets(spec),
        jobs=[
            define_asset_job(
                INGEST_JOB,
                selection=AssetSelection.assets(*INGEST_ASSETS),
                description="Ingest one day: read, validate (blocking GX checks) and load "
                "features into Feast.",
            ),
            define_asset_job(
                LIFECYCLE_JOB,
                selection=AssetSelection.all(),
                description="The whole lifecycle for one day: ingest, validate, features, "
                "train, gate, predict.",
            ),
        ],
        resources={**default_resources(), **(resources or {})},
    )
