"""Promotion stage: the champion/challenger gate. Only a blessed candidate moves the `champion`
alias, and the move is compare-and-set."""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    job,
    op,
)
from pydantic import Field

from mlops_assets.alias_moves import move_champion_audited, repair_interrupted_moves
from mlops_assets.data import partitioned
from mlops_assets.frames import Frame
from mlops_assets.governance import publish_model_card
from mlops_assets.keys import (
    BASELINE_TAG,
    BLESSED_TAG,
    GATE_MESSAGE_TAG,
    GATE_PARTITION_TAG,
    REPLACED_TAG,
    RETIRED_TAG,
    ROLLBACK_JOB,
    ROLLBACK_OP,
    SHADOW_TAG,
    Meta,
    asset_ins,
    asset_key,
    audit_tag,
    is_true,
    scoped_name,
    tag_bool,
)
from mlops_assets.markdown import markdown_table
from mlops_assets.ml.dataset import SPLIT_COLUMN, split
from mlops_assets.ml.evaluation import model_output, output_metrics
from mlops_assets.ml.gate import Blessing, decide
from mlops_assets.ml.governance.report import gate_rules
from mlops_assets.spec import METRICS_BY_TASK, PipelineSpec
from mlops_resources.instance import CHAMPION_POOL
from mlops_resources.mlflow_tracking import (
    CHALLENGER_ALIAS,
    MLFLOW_RETRY_POLICY,
    MLflowResource,
    PromotionConflict,
)
from mlops_resources.model_loading import load_registered_model

GATE_CHECK = "promotion_gate"
MAX_PROMOTION_ATTEMPTS = 3


def settle_challenger(
    context: AssetExecutionContext, mlflow: MLflowResource, name: str, shadow_days: int
) -> None:
    """Promote the challenger once it was shadow-scored on `shadow_days` partitions; drop it
    when the champion it was judged against is no longer the champion."""
    challenger = mlflow.alias_version(name, CHALLENGER_ALIAS)
    if challenger is None:
        return
    tags = mlflow.version_tags(name, challenger)
    scored = [p for p in tags.get(SHADOW_TAG, "").split(",") if p]
    champion = mlflow.champion(name)
    if tags.get(BASELINE_TAG) != (champion or "none"):
        mlflow.delete_alias(name, CHALLENGER_ALIAS)
        context.log.warning(
            f"challenger v{challenger} was judged against v{tags.get(BASELINE_TAG)}, but the "
            f"champion is now v{champion}: dropped"
        )
    elif len(scored) >= shadow_days:
        move_champion_audited(
            context, mlflow, name, challenger, champion, "promote", f"shadow-scored on {scored}"
        )
        mlflow.delete_alias(name, CHALLENGER_ALIAS)
        context.log.info(f"challenger v{challenger} promoted after shadow scoring on {scored}")
    else:
        context.log.info(
            f"challenger v{challenger} shadow-scored on {len(scored)} of {shadow_days} "
            "partitions: kept in shadow"
        )


def holdout_days(training_set: Frame, spec: PipelineSpec) -> list[str]:
    """The days of the holdout rows both models are judged on."""
    rows = training_set.loc[training_set[SPLIT_COLUMN] == "holdout", spec.timestamp]
    return sorted({d.isoformat() for d in rows.dt.date})


def rules_table(rules: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["metric", "rule", "candidate", "champion", "passed"],
        [(r["metric"], r["rule"], r["candidate"], r["champion"], r["passed"]) for r in rules],
    )


def build_model_promotion(spec: PipelineSpec) -> AssetsDefinition:
    directions = METRICS_BY_TASK[spec.task]

    @asset(
        **partitioned(spec, "model_promotion"),
        ins=asset_ins(spec, "candidate_model", "training_set"),
        description="Champion/challenger gate: evaluates candidate and champion on the same "
        "holdout; only a blessed candidate moves the `champion` alias (compare-and-set).",
        check_specs=[
            AssetCheckSpec(
                GATE_CHECK,
                asset=asset_key(spec, "model_promotion"),
                description="The candidate passed the promotion gate.",
            )
        ],
        kinds={"mlflow"},
        retry_policy=MLFLOW_RETRY_POLICY,
        pool=CHAMPION_POOL,  # one champion move at a time (mlops_resources/instance.py)
    )
    def model_promotion(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        candidate_model: dict[str, Any],
        training_set: Frame,
    ):
        name, version = candidate_model["name"], candidate_model["version"]
        X_hold, y_hold = split(training_set, spec, "holdout")
        judged_on = holdout_days(training_set, spec)
        repair_interrupted_moves(context, mlflow, name)
        if spec.gate.shadow_days:
            settle_challenger(context, mlflow, name, spec.gate.shadow_days)
        before = mlflow.champion(name)
        moved = False
        audit: dict[str, str] = {}
        shadowed = False
        for _attempt in range(MAX_PROMOTION_ATTEMPTS):
            champion_version = mlflow.champion(name)
            if champion_version == version:
                blessing = Blessing(True, version, f"v{version} is already the champion")
                break
            champion_model = (
                load_registered_model(name, champion_version) if champion_version else None
            )
            # the champion scores the holdout once: for its metrics and its slices
            champion_output = (
                model_output(champion_model, X_hold, spec) if champion_model is not None else None
            )
            champion_metrics = (
                output_metrics(*champion_output, y_hold, spec)
                if champion_output is not None
                else None
            )
            blessing = decide(
                spec.gate,
                directions,
                candidate_model["metrics"],
                champion_metrics,
                champion_version,
                gate_rules(spec, candidate_model, champion_output, training_set),
            )
            blessing.message += f" (judged on the newest labelled rows, of {', '.join(judged_on)})"
            mlflow.tag_version(
                name,
                version,
                {
                    BLESSED_TAG: tag_bool(blessing.blessed),
                    BASELINE_TAG: blessing.baseline_version or "none",
                    GATE_MESSAGE_TAG: blessing.message[:4000],
                    GATE_PARTITION_TAG: context.partition_key,
                },
            )
            if not blessing.blessed:
                break
            if spec.gate.shadow_days and champion_version is not None:
                mlflow.set_alias(name, CHALLENGER_ALIAS, version)
                mlflow.tag_version(name, version, {SHADOW_TAG: ""})
                blessing.message += (
                    f"; now the challenger, scored beside v{champion_version} for "
                    f"{spec.gate.shadow_days} partition(s) before promotion"
                )
                shadowed = True
                break
            try:
                audit = move_champion_audited(
                    context, mlflow, name, version, champion_version, "promote", blessing.message
                )
            except PromotionConflict as exc:
                context.log.warning(f"{exc}; re-evaluating against the new champion")
                continue
            moved = True
            break
        else:
            raise Failure(
                f"champion of {name} kept moving during {MAX_PROMOTION_ATTEMPTS} "
                "promotion attempts; not promoted"
            )
        after = mlflow.champion(name)
        context.log.info(f"gate for v{version}: {blessing.message}")
        verdict = {
            "version": version,
            "blessed": blessing.blessed,
            "baseline_version": blessing.baseline_version,
            "champion_before": before,
            "champion_after": after,
            "champion_moved": moved,
            "challenger": shadowed,
            "message": blessing.message,
            "judged_on": judged_on,
            "rules": blessing.rules,
            "audit": audit,
        }
        card = publish_model_card(mlflow, spec, candidate_model, verdict)
        yield Output(
            verdict,
            metadata={
                Meta.BLESSED: blessing.blessed,
                Meta.CANDIDATE_VERSION: version,
                "baseline_version": blessing.baseline_version or "none",
                Meta.CHAMPION_BEFORE: verdict["champion_before"] or "none",
                Meta.CHAMPION_AFTER: verdict["champion_after"] or "none",
                Meta.CHAMPION_MOVED: moved,
                Meta.CHALLENGER: shadowed,
                Meta.MESSAGE: blessing.message,
                "judged_on": MetadataValue.json(judged_on),
                "metrics": MetadataValue.md(
                    rules_table(blessing.rules) if blessing.rules else blessing.message
                ),
                "mlflow_model_version": MetadataValue.url(mlflow.model_version_url(name, version)),
                "model_card": MetadataValue.md(card),
                **audit,
            },
        )
        yield AssetCheckResult(
            check_name=GATE_CHECK,
            passed=blessing.blessed,
            severity=AssetCheckSeverity.WARN,
            description=blessing.message,
            metadata={Meta.CANDIDATE_VERSION: version, Meta.CHAMPION_MOVED: moved},
        )

    return model_promotion


class RollbackConfig(Config):
    """Why the champion is rolled back, optionally to which version, and from which one."""

    reason: str
    to_version: str = ""
    from_version: str = Field(
        default="",
        description="Compare-and-set: roll back only while this version is the champion; "
        "otherwise the run does nothing and records why (the sensor always sets it).",
    )


def rollback_target(mlflow: MLflowResource, name: str, current: str, to_version: str) -> str:
    """The version to restore: `to_version` or the one `current` replaced; it must have been
    blessed by the gate and not retired."""
    target = to_version or mlflow.version_tags(name, current).get(REPLACED_TAG, "none")
    if target in ("", "none"):
        raise Failure(f"{name} v{current} replaced no earlier version: nothing to roll back to")
    if target == current:
        raise Failure(f"{name} v{target} is already the champion")
    try:
        tags = mlflow.version_tags(name, target)
    except Exception as exc:  # MlflowException: no such version
        raise Failure(f"{name} v{target} is not a registered version: {exc}") from exc
    if not is_true(tags.get(BLESSED_TAG)):
        raise Failure(f"{name} v{target} was never blessed by the gate: not a rollback target")
    if is_true(tags.get(RETIRED_TAG)):
        raise Failure(f"{name} v{target} is retired: not a rollback target")
    return target


def build_rollback_job(spec: PipelineSpec) -> Any:
    @op(
        name=scoped_name(spec, ROLLBACK_OP),
        description="Move the champion alias back (compare-and-set).",
        pool=CHAMPION_POOL,
    )
    def rollback_op(
        context: OpExecutionContext, config: RollbackConfig, mlflow: MLflowResource
    ) -> dict[str, str]:
        name = spec.model_name
        if not config.reason.strip():
            raise Failure("a rollback needs a reason")
        repair_interrupted_moves(context, mlflow, name)
        current = mlflow.champion(name)
        if config.from_version and current != config.from_version:
            skipped = (
                f"skipped: the rollback was requested from v{config.from_version}, but the "
                f"champion of {name} is now {f'v{current}' if current else 'none'}"
            )
            context.log.info(skipped)
            context.add_output_metadata({Meta.SKIPPED: True, Meta.MESSAGE: skipped, "model": name})
            return {
                Meta.SKIPPED: "true",
                Meta.MESSAGE: skipped,
                Meta.FROM_VERSION: config.from_version,
            }
        if current is None:
            raise Failure(f"{name} has no champion: nothing to roll back")
        target = rollback_target(mlflow, name, current, config.to_version)
        audit = move_champion_audited(
            context, mlflow, name, target, current, "rollback", config.reason
        )
        record = {
            Meta.FROM_VERSION: current,
            Meta.TO_VERSION: target,
            Meta.REASON: config.reason,
            Meta.BY: audit[audit_tag("rollback", "by")],
        }
        context.log.info(
            f"champion of {spec.model_name} rolled back from v{current} to v{target}: "
            f"{config.reason}"
        )
        context.add_output_metadata({**record, "model": spec.model_name})
        return record

    @job(
        name=scoped_name(spec, ROLLBACK_JOB),
        description="Move the champion alias back to the version it replaced (or a chosen "
        "blessed version), recording who, when and why.",
    )
    def rollback():
        rollback_op()

    return rollback
