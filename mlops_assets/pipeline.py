"""Wiring: the asset graph, jobs, sensors, schedule and resources for one pipeline spec."""

from __future__ import annotations

from typing import Any

from dagster import AssetSelection, Definitions, define_asset_job

from mlops_assets.automation import (
    DAILY_JOB,
    FEEDBACK_JOB,
    RETRAIN_JOB,
    build_drift_sensor,
    build_new_data_sensor,
    build_nightly_schedule,
)
from mlops_assets.data import build_raw_data
from mlops_assets.features import build_features, build_training_set
from mlops_assets.governance import build_retirement_job, with_code_versions
from mlops_assets.inference import build_batch_predictions
from mlops_assets.monitoring import build_drift_report, build_model_performance
from mlops_assets.promotion import build_model_promotion, build_rollback_job
from mlops_assets.spec import PipelineSpec
from mlops_assets.training import build_candidate_model
from mlops_assets.validation import build_validated_data
from mlops_resources.profiles import profile_resources
from mlops_resources.storage import disable_telemetry

LIFECYCLE_JOB = "lifecycle"
INGEST_JOB = "ingest"
INGEST_ASSETS = ["raw_data", "validated_data", "features"]
TRAINING_ASSETS = ["training_set", "candidate_model", "model_promotion"]


def build_assets(spec: PipelineSpec) -> list[Any]:
    """Every lifecycle asset for the spec, in graph order, each with its code version."""
    return with_code_versions(
        spec,
        [
            build_raw_data(spec),
            build_validated_data(spec),
            build_features(spec),
            build_training_set(spec),
            build_candidate_model(spec),
            build_model_promotion(spec),
            build_batch_predictions(spec),
            build_drift_report(spec),
            build_model_performance(spec),
        ],
    )


def default_resources() -> dict[str, Any]:
    """The resources of the active profile ($MLOPS_PROFILE): `local` (default, embedded, no
    servers) or `production` (S3, MLflow server, Redis); see mlops_resources/profiles.py."""
    return profile_resources()


def build_jobs(spec: PipelineSpec) -> dict[str, Any]:
    """The asset jobs by name: what the CLI, the sensors and the schedule launch."""
    jobs = [
        define_asset_job(
            INGEST_JOB,
            selection=AssetSelection.assets(*INGEST_ASSETS),
            description="Ingest one day: read, validate (blocking GX checks) and load features "
            "into Feast.",
        ),
        define_asset_job(
            DAILY_JOB,
            selection=AssetSelection.assets(*INGEST_ASSETS, "batch_predictions", "drift_report"),
            description="A new day: ingest, score with the champion (and shadow-score a "
            "challenger), report drift.",
        ),
        define_asset_job(
            RETRAIN_JOB,
            selection=AssetSelection.assets(*TRAINING_ASSETS),
            description="Continuous training: training set, candidate, gate and promotion.",
        ),
        define_asset_job(
            FEEDBACK_JOB,
            selection=AssetSelection.assets("model_performance"),
            description="Labels have arrived for a day: the champion's performance on them.",
        ),
        define_asset_job(
            LIFECYCLE_JOB,
            selection=AssetSelection.all() - AssetSelection.assets("model_performance"),
            description="The whole lifecycle for one day: ingest, validate, features, train, "
            "gate, predict, drift.",
        ),
    ]
    return {job.name: job for job in jobs}


def build_definitions(spec: PipelineSpec, resources: dict[str, Any] | None = None) -> Definitions:
    disable_telemetry()
    jobs = build_jobs(spec)
    rollback = build_rollback_job(spec)
    return Definitions(
        assets=build_assets(spec),
        jobs=[*jobs.values(), rollback, build_retirement_job(spec)],
        sensors=[
            build_new_data_sensor(spec, jobs[DAILY_JOB], jobs[FEEDBACK_JOB]),
            build_drift_sensor(spec, jobs[RETRAIN_JOB], rollback),
        ],
        schedules=[build_nightly_schedule(spec, jobs[RETRAIN_JOB])],
        resources={**default_resources(), **(resources or {})},
    )
