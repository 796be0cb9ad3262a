"""A copied or restored MLOPS_HOME: the suite refuses to run against records of the old
folder, says what to do, and `relocate` makes the copy self-contained."""

import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from mlops_assets.keys import LIFECYCLE_JOB, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.model_loading import load_registered_model
from tests.conftest import run_cli
from tests.reliability.conftest import TrainedState


def test_a_moved_home_is_refused_until_relocated(
    in_trained: TrainedState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    state = in_trained
    copy = tmp_path / "restored_home"
    shutil.copytree(state.home, copy)
    monkeypatch.setenv("MLOPS_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy / "dagster"))
    job = build_definitions(state.spec).resolve_job_def(scoped_name(state.spec, LIFECYCLE_JOB))
    day = state.trained_day.isoformat()
    select = [AssetKey([state.spec.name, "batch_predictions"])]

    refused = job.execute_in_process(
        partition_key=day,
        instance=DagsterInstance.get(),
        asset_selection=select,
        raise_on_error=False,
    )
    assert not refused.success
    text = "\n".join(str(e.event_specific_data) for e in refused.all_events if e.is_failure)
    assert "python -m mlops_assets relocate" in text and str(state.home) in text

    code, out = run_cli("relocate", "--config", str(state.spec_path))
    assert code == 0 and f"-> {copy}" in out, out
    assert run_cli("relocate", "--config", str(state.spec_path))[1].count(" 0 MLflow") == 1

    mlflow = MLflowResource()
    champion = mlflow.champion(state.spec.model_name)
    version = mlflow.client().get_model_version(state.spec.model_name, champion)
    assert mlflow.client().get_run(version.run_id).info.artifact_uri.startswith(copy.as_uri())
    assert load_registered_model(state.spec.model_name, champion) is not None
    scored = job.execute_in_process(
        partition_key=day, instance=DagsterInstance.get(), asset_selection=select
    )
    assert scored.success
