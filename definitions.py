"""Dagster code location: the lifecycle graph for the spec in $MLOPS_CONFIG (default: the demo)."""

from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec

defs = build_definitions(load_spec())
