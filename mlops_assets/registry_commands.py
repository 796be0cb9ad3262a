"""Registry actions on a model version: the retirement job (archive a version, audited) and the
`python -m mlops_assets retire | reproduce | relocate` commands; reproduction itself is
mlops_assets.ml.governance.reproduce, run with the active profile's MLflow resource."""

import contextlib
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any

from dagster import (
    Config,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    job,
    op,
)

from mlops_assets.governance import record_audit
from mlops_assets.keys import (
    REPRODUCED_AT_TAG,
    REPRODUCED_TAG,
    RETIRE_JOB,
    RETIRE_OP,
    RETIRED_TAG,
    scoped_name,
    tag_bool,
)
from mlops_assets.ml.governance.reproduce import ReproduceError, reproduce_version
from mlops_assets.spec import PipelineSpec
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.profiles import profile_resources
from mlops_resources.storage import mlops_home


class RetirementRefused(RuntimeError):
    """Retiring this version needs `force` (it is the current champion)."""


def retire_version(
    mlflow: MLflowResource, name: str, version: str, force: bool = False
) -> dict[str, Any]:
    """Archive a version: remove its aliases and tag it retired; its artifacts and card stay.
    Refuses the current champion unless `force`."""
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RetirementRefused(f"{name} v{version} does not exist in the registry") from exc
    champion = mlflow.champion(name)
    if champion == str(version) and not force:
        raise RetirementRefused(
            f"{name} v{version} is the current champion: promote or roll back to another version "
            "first, or retire it with force (then no champion serves and batch_predictions "
            "scores nothing until a new one is promoted)"
        )
    for alias in found.aliases:
        client.delete_registered_model_alias(name, alias)
    mlflow.tag_version(name, version, {RETIRED_TAG: tag_bool(True)})
    return {
        "version": str(version),
        "aliases_removed": list(found.aliases),
        "was_champion": champion == str(version),
    }


class RetireConfig(Config):
    """Which version to retire, why, and whether the champion may be retired."""

    version: str
    reason: str
    force: bool = False


def build_retirement_job(spec: PipelineSpec) -> JobDefinition:
    @op(
        name=scoped_name(spec, RETIRE_OP),
        description=f"Archive a version of {spec.model_name}: remove its aliases, tag it "
        "retired, keep its artifacts and model card; refuses the champion unless forced.",
    )
    def retire_model_version(
        context: OpExecutionContext, config: RetireConfig, mlflow: MLflowResource
    ) -> Output[dict[str, Any]]:
        try:
            result = retire_version(mlflow, spec.model_name, config.version, config.force)
        except RetirementRefused as exc:
            raise Failure(str(exc)) from None
        audit = record_audit(
            context, mlflow, spec.model_name, config.version, "retire", config.reason
        )
        context.log.info(f"retired {spec.model_name} v{config.version}: {config.reason}")
        return Output(
            {**result, "audit": audit},
            metadata={
                **result,
                "aliases_removed": MetadataValue.json(result["aliases_removed"]),
                **audit,
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, config.version)
                ),
            },
        )

    @job(
        name=scoped_name(spec, RETIRE_JOB),
        description=f"Retire a version of {spec.model_name} (run config).",
    )
    def retire_model() -> None:
        retire_model_version()

    return retire_model


def retire_command(
    spec: PipelineSpec, defs: Any, instance: Any, version: str, reason: str, force: bool
) -> int:
    """Run the retirement job on the persistent instance as the current user; 0 when retired,
    1 when refused (the reason goes to stderr)."""
    config = {"version": version, "reason": reason, "force": force}
    with contextlib.redirect_stdout(sys.stderr):
        result = defs.resolve_job_def(scoped_name(spec, RETIRE_JOB)).execute_in_process(
            run_config={"ops": {scoped_name(spec, RETIRE_OP): {"config": config}}},
            instance=instance,
            tags={"user": getpass.getuser()},
            raise_on_error=False,
        )
    if not result.success:
        errors = [
            e.event_specific_data.error.message.strip()
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error
        ]
        print(f"not retired: {'; '.join(errors) or 'run failed'}", file=sys.stderr)
        return 1
    done = result.output_for_node(scoped_name(spec, RETIRE_OP))
    print(
        f"retired {spec.model_name} v{version} (aliases removed: "
        f"{', '.join(done['aliases_removed']) or 'none'}; dagster run {result.run_id})"
    )
    return 0


def reproduce_command(spec: PipelineSpec, version: str, as_json: bool) -> int:
    """Retrain a version from its recorded inputs and print recorded vs reproduced metrics;
    0 when every metric matches, 1 when one differs, 2 when the inputs are missing."""
    mlflow = profile_resources()["mlflow"]  # the active profile's store, as `retire` uses
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = reproduce_version(mlflow, spec.model_name, version)
    except ReproduceError as exc:
        print(f"cannot reproduce: {exc}", file=sys.stderr)
        return 2
    mlflow.tag_version(
        spec.model_name,
        version,
        {
            REPRODUCED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
            REPRODUCED_TAG: "match" if result["match"] else "mismatch",
        },
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['model']} v{result['version']}: data version {result['data_version']}, "
            f"seed {result['seed']}, code version {result['code_version']} "
            f"(now {result['code_version_now']})"
        )
        for row in result["metrics"]:
            print(
                f"  {row['metric']:<10} recorded {row['recorded']:.6f} reproduced "
                f"{row['reproduced']:.6f} {'ok' if row['match'] else 'DIFFERS'}"
            )
        print("reproduced: same metrics" if result["match"] else "NOT reproduced")
    return 0 if result["match"] else 1


def relocate_command(spec: PipelineSpec) -> int:
    """Rewrite MLflow's recorded artifact locations to the current MLOPS_HOME and re-apply the
    spec's Feast definitions (their offline source path is absolute too)."""
    from mlops_assets.features import feast_definitions
    from mlops_resources.feast_store import FeastResource
    from mlops_resources.relocation import relocate_home

    moved = relocate_home(mlops_home())
    feast = FeastResource()
    feast.apply(feast_definitions(spec, feast))
    print(
        f"MLOPS_HOME {moved['from']} -> {moved['to']}: {moved['rewritten']} MLflow locations "
        f"rewritten; Feast definitions of {spec.name} re-applied"
    )
    return 0
