"""Crash-consistent moves of the `champion` alias: promotion and rollback.

A move is three writes to MLflow (the alias, then the audit tags on the versions), and a
process can die between any two. So the intent is recorded first, on the version the alias
moves to (`mlops.alias_intent`: action, from, reason, run), then the alias moves
(compare-and-set under the promotion lease), then the audit is written, then the intent is
cleared. Whoever next touches the champion (model_promotion, rollback) calls
`repair_interrupted_moves` first: the champion carrying an intent gets its audit completed; an
intent on any other version is dropped (its move never happened, or was undone since). No
sequence of crashes leaves an unaudited champion or a rollback that cannot run.
"""

from __future__ import annotations

import json
from typing import Any

from mlops_assets.governance import record_audit
from mlops_assets.keys import (
    INTENT_TAG,
    REPLACED_TAG,
    RESTORED_AT_TAG,
    RESTORED_FROM_TAG,
    ROLLED_BACK_TO_TAG,
    audit_tag,
)
from mlops_resources.mlflow_tracking import MLflowResource


def move_champion_audited(
    context: Any,
    mlflow: MLflowResource,
    name: str,
    version: str,
    expected: str | None,
    action: str,
    reason: str,
) -> dict[str, str]:
    """Move `champion` from `expected` to `version` (compare-and-set; PromotionConflict when it
    moved meanwhile) for `action` ("promote" or "rollback"); returns the audit tags."""
    intent = {"action": action, "from": expected or "none", "reason": reason[:2000]}
    mlflow.tag_version(name, version, {INTENT_TAG: json.dumps(intent)})
    try:
        mlflow.move_champion(name, version, expected=expected)
    except Exception:
        clear_intent(mlflow, name, version)
        raise
    audit = complete_audit(context, mlflow, name, version, intent)
    clear_intent(mlflow, name, version)
    return audit


def complete_audit(
    context: Any, mlflow: MLflowResource, name: str, version: str, intent: dict[str, str]
) -> dict[str, str]:
    """The tags a finished move leaves: the promoted version names the one it replaced; a
    rollback names its target on the version rolled back and its origin on the target."""
    replaced, reason = intent["from"], intent["reason"]
    if intent["action"] == "promote":
        mlflow.tag_version(name, version, {REPLACED_TAG: replaced})
        return record_audit(context, mlflow, name, version, "promote", reason)
    audit = record_audit(context, mlflow, name, replaced, "rollback", reason)
    mlflow.tag_version(name, replaced, {ROLLED_BACK_TO_TAG: version})
    mlflow.tag_version(
        name,
        version,
        {RESTORED_AT_TAG: audit[audit_tag("rollback", "at")], RESTORED_FROM_TAG: replaced},
    )
    return audit


def clear_intent(mlflow: MLflowResource, name: str, version: str) -> None:
    mlflow.client().delete_model_version_tag(name, str(version), INTENT_TAG)


def repair_interrupted_moves(context: Any, mlflow: MLflowResource, name: str) -> list[str]:
    """Complete the audit of a move that moved the alias and then died; drop the intents of
    moves that never happened. Returns what was repaired, in words (also logged)."""
    champion = mlflow.champion(name)
    repaired = []
    for found in mlflow.client().search_model_versions(f"name='{name}'"):
        raw = found.tags.get(INTENT_TAG)
        if raw is None:
            continue
        version = str(found.version)
        intent = json.loads(raw)
        if version == champion:
            intent["reason"] = (
                f"completed after an interrupted {intent['action']}: " + (intent["reason"])
            )
            complete_audit(context, mlflow, name, version, intent)
            repaired.append(f"v{version}: {intent['action']} from v{intent['from']} completed")
        else:
            repaired.append(f"v{version}: {intent['action']} never happened, intent dropped")
        clear_intent(mlflow, name, version)
    for line in repaired:
        context.log.warning(f"{name} {line}")
    return repaired
