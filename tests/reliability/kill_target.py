"""The lifecycle job for $MLOPS_CONFIG, importable so that a child process can run it and
`reconstructable` can re-execute it."""

from dagster import JobDefinition

from mlops_assets.pipeline import LIFECYCLE_JOB, build_definitions
from mlops_assets.spec import load_spec


def lifecycle_job() -> JobDefinition:
    return build_definitions(load_spec()).resolve_job_def(LIFECYCLE_JOB)
