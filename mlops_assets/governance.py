"""Governance, the Dagster side: what candidate_model logs with each version (the report, the
lineage from the Dagster instance, the inputs that reproduce it, the plots, the model card) and
the audit trail of registry actions (promote, rollback, retire, canary stop) in MLflow and in the
Dagster instance. The measures themselves are in mlops_assets.ml.governance; the retirement job
and the retire/reproduce commands in mlops_assets.registry_commands.
"""

import getpass
import hashlib
import json
import math
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import AssetRecordsFilter, MetadataValue

from mlops_assets.frames import Frame
from mlops_assets.keys import (
    ACTION_BY_TAG,
    ACTION_REASON_TAG,
    ACTION_TAG,
    ACTION_VERSION_TAG,
    AUDIT_ACTIONS,
    SENSOR_NAME_TAG,
    asset_key,
    audit_tag,
)
from mlops_assets.ml.dataset import content_hash
from mlops_assets.ml.governance.lineage import (
    ARTIFACT_DIR,
    CARD_FILE,
    REPORT_FILE,
    SPEC_FILE,
    TORCH_SETTINGS_FILE,
    TRAINING_SET_FILE,
    git_commit,
    spec_subset,
)
from mlops_assets.ml.governance.model_card import render_model_card
from mlops_assets.ml.governance.plots import governance_figures
from mlops_assets.ml.governance.report import governance_metrics, governance_report
from mlops_assets.spec import PipelineSpec
from mlops_resources.mlflow_tracking import MLflowResource

if TYPE_CHECKING:
    import numpy as np


def upstream_data_versions(
    context: Any, spec: PipelineSpec, asset: str, partitions: list[str]
) -> dict[str, str]:
    """Latest recorded DataVersion of the pipeline's `asset` for each partition, from the
    Dagster instance."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key(spec, asset), asset_partitions=partitions),
        limit=len(partitions) * 20,
    ).records
    versions: dict[str, str] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        version = (materialization.tags or {}).get("dagster/data_version")
        if version and materialization.partition not in versions:
            versions[materialization.partition] = version
    return dict(sorted(versions.items()))


def lineage(
    context: Any, spec: PipelineSpec, training_set: Frame, training_version: str | None = None
) -> dict[str, Any]:
    """What a model version was built from: data versions, code versions, spec, commit, run.
    `training_version`: the training set's content hash when the caller has it already."""
    import pandas as pd

    # the few distinct days, not a Python date per row (seconds on a million rows)
    days = sorted(pd.DatetimeIndex(training_set[spec.timestamp].dt.normalize().unique()).date)
    days = [d.isoformat() for d in days]
    return {
        "partition": context.partition_key,
        "dagster_run_id": context.run.run_id,
        "data_versions": {
            "training_set": training_version or content_hash(training_set),
            "features": upstream_data_versions(context, spec, "features", days),
        },
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
        "spec_hash": hashlib.sha256(
            json.dumps(spec_subset(spec, None), sort_keys=True).encode()
        ).hexdigest()[:16],
        "git_commit": git_commit(),
        "seed": spec.model.seed,
    }


def log_governance(
    context: Any,
    spec: PipelineSpec,
    training_set: Frame,
    holdout_output: "tuple[np.ndarray, np.ndarray | None]",
    torch_settings: dict[str, Any] | None = None,
    training_version: str | None = None,
) -> dict[str, Any]:
    """Compute the governance report from the model's output on the holdout rows (see
    model_output) and log it to the active MLflow run with the inputs that reproduce the model
    (spec, training set and, for torch_mlp, the Torch executor's settings) and the plots.
    Returns the report. `training_version`: the training set's content hash, if known (it is
    computed otherwise)."""
    import mlflow

    report = governance_report(spec, training_set, *holdout_output)
    report["lineage"] = lineage(context, spec, training_set, training_version)
    versions = report["lineage"]["data_versions"]
    mlflow.log_params(
        {
            "data_version_training_set": versions["training_set"],
            "code_version": report["lineage"]["code_version"],
        }
    )
    mlflow.log_metrics({k: v for k, v in governance_metrics(report).items() if not math.isnan(v)})
    mlflow.log_dict(report, f"{ARTIFACT_DIR}/{REPORT_FILE}")
    mlflow.log_dict(spec.model_dump(mode="json"), f"{ARTIFACT_DIR}/{SPEC_FILE}")
    if torch_settings is not None:
        mlflow.log_dict(torch_settings, f"{ARTIFACT_DIR}/{TORCH_SETTINGS_FILE}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TRAINING_SET_FILE
        training_set.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), ARTIFACT_DIR)
    for name, figure in governance_figures(spec, report).items():
        mlflow.log_figure(figure, f"{ARTIFACT_DIR}/{name}")
    return report


def publish_model_card(
    mlflow: MLflowResource,
    spec: PipelineSpec,
    candidate: dict[str, Any],
    verdict: dict[str, Any] | None = None,
) -> str:
    """Render the card and store it as the run's `governance/model_card.md` (replacing an
    earlier one, e.g. the card written before the gate). Returns the markdown."""
    card = render_model_card(spec, candidate, verdict)
    mlflow.client().log_text(candidate["run_id"], card, f"{ARTIFACT_DIR}/{CARD_FILE}")
    return card


def governance_metadata(report: dict[str, Any], card: str) -> dict[str, Any]:
    """Asset metadata: the card, the scalar measures and the lineage."""
    return {
        "model_card": MetadataValue.md(card),
        "lineage": MetadataValue.json(report["lineage"]),
        **{k: float(v) for k, v in governance_metrics(report).items()},
    }


def triggered_by(run_tags: Mapping[str, str]) -> str:
    """Who or what started a Dagster run: its sensor, schedule, automation, backfill or user."""
    if run_tags.get(SENSOR_NAME_TAG):
        return f"sensor:{run_tags['dagster/sensor_name']}"
    if run_tags.get("dagster/schedule_name"):
        return f"schedule:{run_tags['dagster/schedule_name']}"
    if run_tags.get("dagster/from_automation_condition") or run_tags.get(
        "dagster/auto_materialize"
    ):
        return "automation:declarative"
    user = run_tags.get("user") or getpass.getuser()
    if run_tags.get("dagster/backfill"):
        return f"backfill:{run_tags['dagster/backfill']} by user:{user}"
    return f"user:{user}"


def audit_tags(context: Any, action: str, reason: str) -> dict[str, str]:
    """MLflow version tags recording who/what did `action` (see AUDIT_ACTIONS), when, in which
    Dagster run, and why: `mlops.<promoted|rolled_back|retired|canary_stopped>_{by,at,run_id,
    reason}`.
    `context` is any Dagster op or asset execution context."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {sorted(AUDIT_ACTIONS)}")
    return {
        audit_tag(action, "by"): triggered_by(context.run.tags),
        audit_tag(action, "at"): datetime.now(UTC).isoformat(timespec="seconds"),
        audit_tag(action, "run_id"): context.run.run_id,
        audit_tag(action, "reason"): reason[:4000],
    }


def record_audit(
    context: Any, mlflow: MLflowResource, name: str, version: str, action: str, reason: str
) -> dict[str, str]:
    """Record an action on a model version in MLflow (version tags) and in the Dagster instance
    (run tags `mlops/action`, `mlops/model_version`, `mlops/triggered_by`, `mlops/reason`, which
    `instance.get_runs(RunsFilter(tags=...))` finds). Returns the MLflow tags, for metadata."""
    tags = audit_tags(context, action, reason)
    mlflow.tag_version(name, version, tags)
    context.instance.add_run_tags(
        context.run.run_id,
        {
            ACTION_TAG: action,
            ACTION_VERSION_TAG: f"{name}/{version}",
            ACTION_BY_TAG: tags[audit_tag(action, "by")],
            ACTION_REASON_TAG: reason[:1000],
        },
    )
    return tags
