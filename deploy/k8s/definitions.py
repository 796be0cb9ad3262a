"""Definitions for Kubernetes: the suite's graph with every step in its own pod.

The same assets and resources as definitions.py (set MLOPS_PROFILE=production in the pods),
plus dagster-k8s's k8s_job_executor configured from deploy/k8s/executor.yaml. Point the
workspace (deploy/k8s/workspace.yaml, or the Helm chart's user deployment) at this file.
"""

from pathlib import Path

import yaml
from dagster import Definitions
from dagster_k8s import k8s_job_executor

from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec

EXECUTOR_CONFIG = Path(__file__).with_name("executor.yaml")

defs = Definitions.merge(
    build_definitions(load_spec()),
    Definitions(executor=k8s_job_executor.configured(yaml.safe_load(EXECUTOR_CONFIG.read_text()))),
)
