"""Security: models load without unpickling, secrets are never echoed, paths stay inside their
configured roots. The threat model is in docs/security.md."""

import pickle
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, Failure
from dagster._core.errors import DagsterUnknownPartitionError

from mlops_assets.data import DATA_ROOTS_VAR, partition_day
from mlops_assets.keys import LIFECYCLE_JOB, asset_key, scoped_name, step_key
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.model_loading import load_registered_model
from tests.reliability.conftest import TrainedState


class Payload:
    """Unpickling this object creates a marker file: proof that a loader ran foreign code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def tampered_copy(state: TrainedState, tmp_path: Path, payload: bytes) -> Path:
    """A copy of the champion's logged model folder with its model file replaced by `payload`."""
    mlflow = MLflowResource()
    version = mlflow.client().get_model_version(state.spec.model_name, "1")
    import mlflow as mlflow_api

    local = Path(mlflow_api.artifacts.download_artifacts(version.source, dst_path=str(tmp_path)))
    [model_file] = [p for p in local.iterdir() if p.suffix in (".skops", ".pkl", ".pickle")]
    model_file.write_bytes(payload)
    return local


@pytest.mark.parametrize("kind", ["pickle_in_place_of_skops", "skops_with_untrusted_type"])
def test_tampered_sklearn_artifact_is_refused_without_running_it(
    in_trained: TrainedState, tmp_path: Path, kind: str
):
    import skops.io as sio

    marker = tmp_path / "payload_ran"
    payload = (
        pickle.dumps(Payload(marker))
        if kind == "pickle_in_place_of_skops"
        else sio.dumps({"model": Payload(marker)})
    )
    folder = tampered_copy(in_trained, tmp_path / "download", payload)
    mlflow = MLflowResource()
    client = mlflow.client()
    client.create_registered_model("tampered_model")
    tampered = client.create_model_version("tampered_model", folder.as_uri())

    with pytest.raises(Exception) as refused:
        load_registered_model("tampered_model", str(tampered.version))
    assert not marker.exists(), "the tampered artifact ran code while loading"
    assert "untrusted" in str(refused.value).lower() or "zip" in str(refused.value).lower()
    client.delete_registered_model("tampered_model")
    assert load_registered_model(in_trained.spec.model_name, "1") is not None  # the real one loads


def test_tampered_torch_weights_are_refused_without_running_them(tmp_path: Path):
    from mlops_resources.torch_executor import STATE_DICT_FILE, TorchExecutorResource
    from mlops_resources.torch_executor import TorchTabularModel as Model
    from tests.test_torch_executor import MetricRecorder, binary_data, fit_binary

    model = fit_binary(
        TorchExecutorResource(max_epochs=1),
        tmp_path / "ckpt",
        MetricRecorder(),
        data=binary_data(n=300),
    )
    folder = model.save(tmp_path / "model")
    assert Model.load(folder) is not None
    marker = tmp_path / "payload_ran"
    (folder / STATE_DICT_FILE).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Model.load(folder)
    assert not marker.exists()


def test_partition_keys_that_try_path_traversal_are_refused(in_trained: TrainedState):
    before = in_trained.fingerprint()
    spec = in_trained.spec
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
    for key in ["../../etc/passwd", "2024-01-04/../../x", "..", "2024-01-04\x00"]:
        with pytest.raises(DagsterUnknownPartitionError):
            job.execute_in_process(partition_key=key, instance=DagsterInstance.get())
        with pytest.raises(Failure, match="is not a YYYY-MM-DD date"):
            partition_day(key)
    assert in_trained.fingerprint() == before


@pytest.mark.parametrize("escape", ["relative_dotdot", "symlink"])
def test_source_files_outside_the_data_roots_are_refused(
    in_trained: TrainedState, tmp_path: Path, monkeypatch, escape: str
):
    day = in_trained.next_day.isoformat()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(in_trained.home / "demo_data" / f"loans_{day}.parquet", outside)
    spec_dir = tmp_path / "project"
    spec_dir.mkdir()
    if escape == "symlink":
        (spec_dir / "data").symlink_to(outside)
        path = "data/loans_{date}.parquet"
    else:
        path = "../outside/loans_{date}.parquet"
    spec = load_spec(in_trained.write_spec(spec_dir / "spec.yaml", source={"path": path}))
    before = in_trained.fingerprint()
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))

    result = job.execute_in_process(
        partition_key=day, instance=DagsterInstance.get(), raise_on_error=False
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == step_key(spec, "raw_data")
    message = failure.step_failure_data.user_failure_data.description
    assert f"loans_{day}.parquet: outside the allowed data roots" in message
    assert DATA_ROOTS_VAR in message
    assert in_trained.fingerprint() == before

    monkeypatch.setenv(DATA_ROOTS_VAR, str(outside))  # an operator allows that folder explicitly
    result = job.execute_in_process(
        partition_key=day,
        instance=DagsterInstance.get(),
        asset_selection=[asset_key(spec, "raw_data")],
    )
    assert result.asset_value(asset_key(spec, "raw_data")).shape[0] > 0


def test_credentials_in_the_tracking_uri_are_refused_without_echoing_them():
    secret = "hunter2-sentinel"
    resource = MLflowResource(tracking_uri=f"https://mlops:{secret}@mlflow.example.invalid")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD") as refused:
        resource.client()
    assert secret not in str(refused.value)
