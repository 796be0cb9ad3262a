"""Dagster code location of this repo, a dg project (pyproject.toml [tool.dg]): every pipeline
of defs/ (one mlops_assets.TabularMLPipeline per defs.yaml; the demo in defs/loan_default)
with the active profile's resources, shared by all of them. With $MLOPS_CONFIG set, that single
spec file instead."""

from pathlib import Path

from mlops_assets.project import project_definitions

defs = project_definitions(Path(__file__).parent)
