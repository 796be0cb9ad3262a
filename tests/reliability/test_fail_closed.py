"""Fail closed: a registry that answers errors is never read as "no champion", and a tampered
model artifact never runs code, whatever its MLmodel says. The outage is a real MLflow server
behind a loopback proxy that answers 503 on registry lookups (an injected transport error),
not a mock of the suite's code."""

import http.client
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from mlops_assets.keys import DAILY_JOB, LIFECYCLE_JOB, asset_key, base_name, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import MLflowResource
from mlops_resources.model_loading import UnsafeModelError, load_registered_model
from mlops_resources.storage import disable_telemetry
from tests.conftest import python_command
from tests.reliability.conftest import TrainedState
from tests.reliability.test_faults import retries
from tests.reliability.test_security import Payload

REGISTRY_LOOKUPS = ("/registered-models/get", "/registered-models/alias")


def free_port() -> int:
    """A free 127.0.0.1 port below the ephemeral range."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


class FaultyProxy:
    """Forwards HTTP to an upstream MLflow server; while `failing`, registry lookups get 503."""

    def __init__(self, upstream_port: int) -> None:
        self.failing = False
        self.injected = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def forward(self) -> None:
                if proxy.failing and any(p in self.path for p in REGISTRY_LOOKUPS):
                    proxy.injected += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry_proxy(in_trained: TrainedState, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A real `mlflow server` on the trained state's store, behind a FaultyProxy."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    port = free_port()
    store = in_trained.home / "mlflow"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--default-artifact-root",
            (store / "artifacts").as_uri(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow did not start"
            time.sleep(0.5)
        proxy = FaultyProxy(port)
        yield proxy
        proxy.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_registry_errors_are_not_no_champion(in_trained: TrainedState, registry_proxy):
    mlflow = MLflowResource(tracking_uri=registry_proxy.url)
    name = in_trained.spec.model_name
    assert mlflow.champion(name) == "1"
    assert mlflow.champion("no_such_model") is None  # does not exist: the one "no champion"
    assert mlflow.alias_version(name, "no_such_alias") is None
    registry_proxy.failing = True
    with pytest.raises(Exception, match="503"):
        mlflow.champion(name)
    assert registry_proxy.injected


def test_registry_outage_cannot_bypass_the_change_threshold(
    in_trained: TrainedState, registry_proxy, tmp_path: Path
):
    """The adversarial run: a candidate the change threshold rejects replaced the champion
    while alias lookups failed, because the gate read the errors as "no champion yet"."""
    state = in_trained
    raw = yaml.safe_load(state.spec_path.read_text())
    raw["gate"]["change_thresholds"] = {"roc_auc": {"min_absolute_change": 0.3}}
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", gate=raw["gate"]))
    day = state.trained_day.isoformat()
    instance = DagsterInstance.get()
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
    candidate = asset_key(spec, "candidate_model")
    trained = job.execute_in_process(
        partition_key=day, instance=instance, asset_selection=[candidate]
    )
    version = trained.asset_value(candidate)["version"]

    registry_proxy.failing = True
    outage = MLflowResource(tracking_uri=registry_proxy.url)
    result = (
        build_definitions(spec, resources={"mlflow": outage})
        .resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
        .execute_in_process(
            partition_key=day,
            instance=instance,
            asset_selection=[asset_key(spec, "model_promotion")],
            raise_on_error=False,
        )
    )

    assert not result.success
    assert retries(result, "model_promotion") == 2  # retried, then a clear failure
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "503" in failure.step_failure_data.error.to_string()
    mlflow = MLflowResource()
    assert mlflow.champion(spec.model_name) == "1"
    assert "mlops.blessed" not in mlflow.version_tags(spec.model_name, version)


def test_corrupted_tracking_store_fails_daily_instead_of_scoring_nothing(
    in_trained: TrainedState, tmp_path: Path
):
    state = in_trained
    broken = tmp_path / "mlflow.db"
    shutil.copy(state.home / "mlflow" / "mlflow.db", broken)
    with broken.open("r+b") as db:  # keep the sqlite header, overwrite its schema pages
        db.seek(100)
        db.write(os.urandom(8192))
    outage = MLflowResource(tracking_uri=f"sqlite:///{broken}")
    result = (
        build_definitions(state.spec, resources={"mlflow": outage})
        .resolve_job_def(scoped_name(state.spec, DAILY_JOB))
        .execute_in_process(
            partition_key=state.trained_day.isoformat(),
            instance=DagsterInstance.get(),
            asset_selection=[asset_key(state.spec, "batch_predictions")],
            raise_on_error=False,
        )
    )
    assert not result.success  # not "no champion yet: nothing scored"
    assert retries(result, "batch_predictions") == 2
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert base_name(failure.step_key) == "batch_predictions"
    assert MLflowResource().champion(state.spec.model_name) == "1"


def test_cloudpickle_mlmodel_is_refused_without_running_the_payload(
    in_trained: TrainedState, tmp_path: Path
):
    """The adversarial run: MLmodel edited to `serialization_format: cloudpickle` plus a pickle
    made MLflow's loader unpickle it."""
    import mlflow as mlflow_api

    mlflow = MLflowResource()
    client = mlflow.client()
    source = client.get_model_version(in_trained.spec.model_name, "1").source
    folder = Path(mlflow_api.artifacts.download_artifacts(source, dst_path=str(tmp_path / "m")))
    marker = tmp_path / "payload_ran"
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    for flavor in ("sklearn", "python_function"):
        mlmodel["flavors"][flavor].pop("skops_trusted_types", None)
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    mlmodel["flavors"]["sklearn"]["pickled_model"] = "model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (folder / "model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    client.create_registered_model("tampered_cloudpickle")
    tampered = client.create_model_version("tampered_cloudpickle", folder.as_uri())
    try:
        with pytest.raises(UnsafeModelError, match="cloudpickle"):  # points MLflow's fluent API
            mlflow.load_model(f"models:/tampered_cloudpickle/{tampered.version}")
        with pytest.raises(UnsafeModelError, match="cloudpickle"):
            load_registered_model("tampered_cloudpickle", tampered.version)
        assert not marker.exists(), "the tampered artifact ran code while loading"
    finally:
        client.delete_registered_model("tampered_cloudpickle")


def test_pickle_deserialization_is_off_in_every_suite_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    disable_telemetry()  # what definitions, resources and the CLI call on start
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    code = "import definitions, os; print(os.environ['MLFLOW_ALLOW_PICKLE_DESERIALIZATION'])"
    child = subprocess.run(
        python_command(code),
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert child.stdout.strip().splitlines()[-1] == "false", child.stderr[-2000:]
