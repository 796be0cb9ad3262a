"""Definitions for Kubernetes: the suite's graph with every step in its own pod.

The same pipelines and resources as definitions.py (every pipeline of defs/, or $MLOPS_CONFIG's
spec; set MLOPS_PROFILE=production in the pods), plus dagster-k8s's k8s_job_executor configured
from deploy/k8s/executor.yaml. Point the workspace (deploy/k8s/workspace.yaml, or the Helm
chart's user deployment) at this file.

executor.yaml names per-step settings by asset (`candidate_model`); a step's key is
`<pipeline>__<asset>`, so each entry is applied to that asset's step in every pipeline.
"""

from pathlib import Path
from typing import Any

import yaml
from dagster import Definitions
from dagster_k8s import k8s_job_executor

from mlops_assets.project import project_definitions

EXECUTOR_CONFIG = Path(__file__).with_name("executor.yaml")
PROJECT = Path(__file__).resolve().parents[2]


def executor_config(config: dict[str, Any], suite: Definitions) -> dict[str, Any]:
    """`config` with its per-asset settings keyed by the step key of that asset in each
    pipeline (`<pipeline>__<asset>`), as the k8s_job_executor expects."""
    per_asset = config.get("per_step_k8s_config", {})
    steps = {
        key.to_python_identifier(): per_asset[key.path[-1]]
        for key in suite.resolve_asset_graph().get_all_asset_keys()
        if key.path[-1] in per_asset
    }
    return {**config, "per_step_k8s_config": steps}


suite = project_definitions(PROJECT)
defs = Definitions.merge(
    suite,
    Definitions(
        executor=k8s_job_executor.configured(
            executor_config(yaml.safe_load(EXECUTOR_CONFIG.read_text()), suite)
        )
    ),
)
