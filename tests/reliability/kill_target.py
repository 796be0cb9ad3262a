"""The lifecycle job for $MLOPS_CONFIG, importable so that a child process can run it and
`reconstructable` can re-execute it."""

from dagster import JobDefinition

from mlops_assets.keys import LIFECYCLE_JOB, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec


def lifecycle_job() -> JobDefinition:
    spec = load_spec()
    return build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
