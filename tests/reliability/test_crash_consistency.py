"""Crash-consistent promotion: a process killed (SIGKILL) right after it registered a version,
or right after it moved the `champion` alias, leaves no unaudited champion, no lease that
blocks the next move, and no rollback that cannot run; one killed during `features` or the
online write leaves nothing that stops the next run. The kill is real: a child process runs
the lifecycle and kills itself at that moment."""

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mlops_assets.keys import INTENT_TAG
from mlops_resources.mlflow_tracking import LOCK_SUFFIX, MLflowResource
from tests.conftest import python_command, run_cli
from tests.reliability.conftest import TrainedState

ROOT = Path(__file__).resolve().parents[2]
# Runs `lifecycle` for a day and SIGKILLs itself right after the patched call returns.
KILL_AFTER_SCRIPT = """
import os, signal, sys
from dagster import DagsterInstance
from mlflow import MlflowClient
from feast import FeatureStore
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLflowResource
from tests.reliability.kill_target import lifecycle_job

owner, method = sys.argv[2].split(".")
cls = {
    "MlflowClient": MlflowClient,
    "MLflowResource": MLflowResource,
    "FeastResource": FeastResource,
    "FeatureStore": FeatureStore,
}[owner]
original = getattr(cls, method)

def then_die(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(cls, method, then_die)
lifecycle_job().execute_in_process(partition_key=sys.argv[1], instance=DagsterInstance.get())
"""


def run_until_killed(state: TrainedState, spec_path: Path, method: str) -> None:
    child = subprocess.run(
        python_command(KILL_AFTER_SCRIPT, state.trained_day.isoformat(), method),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MLOPS_CONFIG": str(spec_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -9, child.stderr[-3000:]


@pytest.fixture
def permissive(in_trained: TrainedState, tmp_path: Path) -> Path:
    """The state's spec with a gate that blesses any reasonable candidate."""
    raw = yaml.safe_load(in_trained.spec_path.read_text())
    gate = {
        "value_thresholds": {"roc_auc": {"min": 0.5}},
        "change_thresholds": {"roc_auc": {"min_absolute_change": -1.0}},
    }
    return in_trained.write_spec(tmp_path / "permissive.yaml", gate=gate, **{"model": raw["model"]})


def test_killed_right_after_the_alias_moved_then_rollback_repairs_and_runs(
    in_trained: TrainedState, permissive: Path
):
    mlflow = MLflowResource()
    name = in_trained.spec.model_name
    before = mlflow.champion(name)
    # inside move_champion, under the promotion lease, right after the alias moved
    run_until_killed(in_trained, permissive, "MlflowClient.set_registered_model_alias")

    champion = mlflow.champion(name)
    assert champion != before  # the alias moved, then the process died
    tags = mlflow.version_tags(name, champion)
    assert INTENT_TAG in tags and "mlops.promoted_at" not in tags  # unaudited so far
    assert mlflow.client().search_registered_models(f"name='{name}{LOCK_SUFFIX}'")  # dead lease

    started = time.monotonic()
    code, out = run_cli(
        "rollback", "--config", str(in_trained.spec_path), "--reason", "after a crash"
    )
    assert code == 0, out
    assert time.monotonic() - started < 60  # the dead holder's lease is broken at once
    assert mlflow.champion(name) == before
    repaired = mlflow.version_tags(name, champion)
    assert INTENT_TAG not in repaired
    assert repaired["mlops.replaced_version"] == before
    assert repaired["mlops.promoted_reason"].startswith("completed after an interrupted promote")
    assert repaired["mlops.rolled_back_to"] == before
    assert mlflow.version_tags(name, before)["mlops.restored_from"] == champion


def test_killed_right_after_the_version_was_registered_leaves_it_out(
    in_trained: TrainedState, permissive: Path
):
    """The version exists but was never tagged, blessed or promoted: the champion is the same,
    and the next run promotes a new version with its full audit."""
    from dagster import DagsterInstance

    from tests.reliability.kill_target import lifecycle_job

    mlflow = MLflowResource()
    name = in_trained.spec.model_name
    before = mlflow.champion(name)
    versions = {v.version for v in mlflow.client().search_model_versions(f"name='{name}'")}
    # candidate_model's first tagging, right after log_model registered the version
    run_until_killed(in_trained, permissive, "MLflowResource.tag_version")

    [orphan] = [
        v
        for v in mlflow.client().search_model_versions(f"name='{name}'")
        if v.version not in versions
    ]
    assert mlflow.champion(name) == before
    assert "mlops.blessed" not in orphan.tags
    os.environ["MLOPS_CONFIG"] = str(permissive)
    try:
        result = lifecycle_job().execute_in_process(
            partition_key=in_trained.trained_day.isoformat(), instance=DagsterInstance.get()
        )
        assert result.success
        champion = mlflow.champion(name)
        assert champion not in (before, str(orphan.version))
        tags = mlflow.version_tags(name, champion)
        assert tags["mlops.replaced_version"] == before and "mlops.promoted_at" in tags
        assert INTENT_TAG not in tags
        assert "mlops.blessed" not in mlflow.version_tags(name, orphan.version)
    finally:
        del os.environ["MLOPS_CONFIG"]
        mlflow.set_alias(name, "champion", before)


@pytest.mark.parametrize(
    "moment",
    [
        "FeastResource.apply",  # in features: the offline file written, the view applied
        "FeatureStore.write_to_online_store",  # in online_features: the first batch written
    ],
)
def test_killed_during_features_then_the_next_run_trains_and_scores(
    in_trained: TrainedState, permissive: Path, moment: str
):
    from dagster import DagsterInstance

    from tests.reliability.kill_target import lifecycle_job

    mlflow = MLflowResource()
    before = mlflow.champion(in_trained.spec.model_name)  # the shared state's champion
    os.environ["MLOPS_CONFIG"] = str(permissive)
    try:
        # online_features runs last: that child has promoted a new champion before it dies
        run_until_killed(in_trained, permissive, moment)
        assert not list((in_trained.home / "feast" / "offline").rglob("*.tmp"))  # atomic
        result = lifecycle_job().execute_in_process(
            partition_key=in_trained.trained_day.isoformat(), instance=DagsterInstance.get()
        )
        assert result.success
        done = {e.step_key.rpartition("__")[2] for e in result.get_step_success_events()}
        assert {"training_set", "batch_predictions", "online_features"} <= done
    finally:
        del os.environ["MLOPS_CONFIG"]
        mlflow.set_alias(in_trained.spec.model_name, "champion", before)
