"""Wiring: the asset graph, jobs, sensors, schedule and resources for one pipeline spec."""

from __future__ import annotations

from typing import Any

from dagster import AssetSelection, Definitions, define_asset_job

from mlops_assets.alerts import build_alerts_sensor
from mlops_assets.automation import (
    build_drift_sensor,
    build_new_data_sensor,
    build_nightly_schedule,
)
from mlops_assets.code_versions import with_code_versions
from mlops_assets.data import build_raw_data
from mlops_assets.drift import build_drift_report
from mlops_assets.features import build_features, build_online_features, build_training_set
from mlops_assets.inference import build_batch_predictions
from mlops_assets.keys import (
    DAILY_JOB,
    FEEDBACK_JOB,
    INGEST_JOB,
    LIFECYCLE_JOB,
    RETRAIN_JOB,
    asset_key,
    scoped_name,
)
from mlops_assets.monitoring import build_model_performance
from mlops_assets.online import build_online_predictions
from mlops_assets.promotion import build_model_promotion, build_rollback_job
from mlops_assets.registry_commands import build_retirement_job
from mlops_assets.spark_engine.wiring import engine_assets
from mlops_assets.spec import PipelineSpec
from mlops_assets.training import build_candidate_model
from mlops_assets.validation import build_validated_data
from mlops_resources.instance import PIPELINE_TAG
from mlops_resources.profiles import profile_resources
from mlops_resources.storage import disable_telemetry

# Every lifecycle asset's name, in graph order; its key is `<pipeline>/<name>`.
ASSET_NAMES = (
    "raw_data",
    "validated_data",
    "features",
    "training_set",
    "candidate_model",
    "model_promotion",
    "batch_predictions",
    "drift_report",
    "model_performance",
)
INGEST_ASSETS = ["raw_data", "validated_data", "features"]
# With `online_features: true`, the jobs that ingest a day also write it to the online store.
ONLINE_ASSETS = {False: [], True: ["online_features"]}
# What the label_feedback job scores; with serving.monitor_online, the day's online traffic too.
FEEDBACK_ASSETS = {False: ["model_performance"], True: ["online_predictions", "model_performance"]}
TRAINING_ASSETS = ["training_set", "candidate_model", "model_promotion"]


def build_assets(spec: PipelineSpec) -> list[Any]:
    """Every lifecycle asset for the spec, in graph order, each with its code version; with
    `engine: spark`, the data plane's assets are the Spark builds (mlops_assets/spark_engine)."""
    return with_code_versions(
        spec,
        engine_assets(
            spec,
            [
                build_raw_data(spec),
                build_validated_data(spec),
                build_features(spec),
                *([build_online_features(spec)] if spec.online_features else []),
                build_training_set(spec),
                build_candidate_model(spec),
                build_model_promotion(spec),
                build_batch_predictions(spec),
                build_drift_report(spec),
                build_model_performance(spec),
                *([build_online_predictions(spec)] if spec.serving.monitor_online else []),
            ],
        ),
    )


def default_resources() -> dict[str, Any]:
    """The resources of the active profile ($MLOPS_PROFILE): `local` (default, embedded, no
    servers) or `production` (S3, MLflow server, Redis); see mlops_resources/profiles.py."""
    return profile_resources()


def selection(spec: PipelineSpec, *assets: str) -> AssetSelection:
    """The pipeline's assets named `assets` (their keys carry the pipeline's prefix)."""
    return AssetSelection.assets(*(asset_key(spec, name) for name in assets))


def build_jobs(spec: PipelineSpec) -> dict[str, Any]:
    """The asset jobs by base name (DAILY_JOB, ...): what the CLI, the sensors and the schedule
    launch. Each job's own name is scoped to the pipeline (`<pipeline>__daily`), and each
    carries the tag PIPELINE_TAG=<pipeline>: the run queue of the instance's dagster.yaml
    starts one run per pipeline at a time (mlops_resources/instance.py)."""
    tags = {PIPELINE_TAG: spec.name}
    online = ONLINE_ASSETS[spec.online_features]
    jobs = {
        INGEST_JOB: define_asset_job(
            scoped_name(spec, INGEST_JOB),
            tags=tags,
            selection=selection(spec, *INGEST_ASSETS, *online),
            description="Ingest one day: read, validate (blocking GX checks) and load features "
            "into Feast (and its online store when the spec asks for online features).",
        ),
        DAILY_JOB: define_asset_job(
            scoped_name(spec, DAILY_JOB),
            tags=tags,
            selection=selection(spec, *INGEST_ASSETS, "batch_predictions", "drift_report", *online),
            description="A new day: ingest, score with the champion (and shadow-score a "
            "challenger), report drift.",
        ),
        RETRAIN_JOB: define_asset_job(
            scoped_name(spec, RETRAIN_JOB),
            tags=tags,
            selection=selection(spec, *TRAINING_ASSETS),
            description="Continuous training: training set, candidate, gate and promotion.",
        ),
        FEEDBACK_JOB: define_asset_job(
            scoped_name(spec, FEEDBACK_JOB),
            tags=tags,
            selection=selection(spec, *FEEDBACK_ASSETS[spec.serving.monitor_online]),
            description="Labels have arrived for a day: the champion's performance on them.",
        ),
        LIFECYCLE_JOB: define_asset_job(
            scoped_name(spec, LIFECYCLE_JOB),
            tags=tags,
            selection=selection(
                spec, *(a for a in ASSET_NAMES if a != "model_performance"), *online
            ),
            description="The whole lifecycle for one day: ingest, validate, features, train, "
            "gate, predict, drift.",
        ),
    }
    return jobs


def build_pipeline_definitions(spec: PipelineSpec) -> Definitions:
    """One pipeline's assets, checks, jobs, sensors and schedule, without resources: what the
    TabularMLPipeline component returns, so that many pipelines merge into one code location
    whose resources (shared by all of them) come from the project's definitions.py."""
    disable_telemetry()
    jobs = build_jobs(spec)
    rollback = build_rollback_job(spec)
    all_jobs = [*jobs.values(), rollback, build_retirement_job(spec)]
    return Definitions(
        assets=build_assets(spec),
        jobs=all_jobs,
        sensors=[
            build_new_data_sensor(spec, jobs[DAILY_JOB], jobs[FEEDBACK_JOB]),
            build_drift_sensor(spec, jobs[RETRAIN_JOB], rollback),
            build_alerts_sensor(spec, all_jobs),
        ],
        schedules=[build_nightly_schedule(spec, jobs[RETRAIN_JOB])],
    )


def build_definitions(spec: PipelineSpec, resources: dict[str, Any] | None = None) -> Definitions:
    """One pipeline with the active profile's resources (`resources` override them by key): a
    whole code location for a single spec, as the CLI and $MLOPS_CONFIG use it."""
    return Definitions.merge(
        build_pipeline_definitions(spec),
        Definitions(resources={**default_resources(), **(resources or {})}),
    )
