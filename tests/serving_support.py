"""Shared by the serving tests: a trained state with three registered versions, the server
started as `python -m mlops_assets serve` on loopback, and helpers to call it and read its
request log. Nothing mocked (docs/serving.md)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops_assets.keys import LIFECYCLE_JOB, scoped_name
from mlops_assets.serving.request_log import request_log_folder
from mlops_resources.mlflow_tracking import MLflowResource
from tests.conftest import REPO
from tests.reliability.conftest import TrainedState, set_env, trained  # noqa: F401 (fixture)
from tests.reliability.test_fail_closed import free_port

READY_TIMEOUT = 180.0
REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class ServingState:
    """The trained state with three registered versions: v1 (champion, trained by the
    pipeline), v2 (trained by the pipeline one day later), v3 (trained on shuffled labels: a
    bad model, for the canary), and the delivered label of every entity's latest row."""

    trained: TrainedState
    labels: dict[str, str]

    @property
    def spec(self):
        return self.trained.spec

    @property
    def name(self) -> str:
        return self.trained.spec.model_name


def log_bad_model(state: TrainedState) -> str:
    """Register a real scikit-learn model of the spec trained on shuffled labels, through the
    suite's own logging (skops); returns its version."""
    import pandas as pd

    from mlops_assets.ml.estimators import build_estimator
    from mlops_assets.ml.model_kinds import log_sklearn_model

    spec = state.spec
    offline = state.home / "feast" / "offline" / spec.name
    rows = pd.concat(pd.read_parquet(p) for p in sorted(offline.glob("*.parquet")))
    X = rows[spec.feature_names]
    y = rows[spec.label].sample(frac=1.0, random_state=0).to_numpy()
    model = build_estimator(spec).fit(X, y)
    with MLflowResource().start_run("shuffled-labels"):
        info = log_sklearn_model(model, spec, X.head(50))
    return str(info.registered_model_version)


@pytest.fixture(scope="module", name="serving")
def serving_fixture(trained: TrainedState) -> Iterator[ServingState]:  # noqa: F811
    import pandas as pd
    from dagster import DagsterInstance

    from mlops_assets.pipeline import build_definitions

    saved = set_env({**trained.env, "MLOPS_CONFIG": None})
    try:
        mlflow = MLflowResource()
        spec = trained.spec
        found = mlflow.client().search_model_versions(f"name='{spec.model_name}'")
        versions = {str(v.version) for v in found}
        if versions == {"1"}:  # the first serving test module: train v2 and register v3
            job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
            day = trained.next_day.isoformat()
            assert job.execute_in_process(partition_key=day, instance=DagsterInstance.get()).success
        if "3" not in versions:
            assert log_bad_model(trained) == "3"
        mlflow.set_alias(spec.model_name, "champion", "1")
        offline = trained.home / "feast" / "offline" / spec.name
        rows = pd.concat(pd.read_parquet(p) for p in sorted(offline.glob("*.parquet")))
        latest = rows.sort_values(spec.timestamp).groupby(spec.entity_key).tail(1)
        labels = dict(zip(latest[spec.entity_key], latest[spec.label].astype(str), strict=True))
        yield ServingState(trained, labels)
    finally:
        set_env(saved)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]


@contextlib.contextmanager
def running_server(
    state: ServingState, tmp: Path, cli: tuple[str, ...] = (), **serving: Any
) -> Iterator[Server]:
    """`python -m mlops_assets serve` (with the options `cli`) on the state's spec with a
    `serving:` section, on a free loopback port; waits for /ready; stopped with SIGTERM (it
    flushes its request log). Several may run at once in one `tmp` (replicas)."""
    spec_path = state.trained.write_spec(
        tmp / "spec.yaml", serving={"refresh_seconds": REFRESH_SECONDS, **serving}
    )
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {**os.environ, **state.trained.env, "PYTHONPATH": str(REPO)}
    env.pop("MLOPS_CONFIG", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets", "serve", "--config", str(spec_path)]
            + ["--port", str(port), *cli],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        with server.client() as client:
            while True:
                assert process.poll() is None, f"server exited: {server.log_tail()}"
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ready").status_code == 200:
                        break
                assert time.monotonic() < deadline, f"not ready: {server.log_tail()}"
                time.sleep(0.5)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", name="server")
def server_fixture(
    serving: ServingState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Shadow only (no canary)."""
    with running_server(serving, tmp_path_factory.mktemp("serve")) as running:
        yield running


def predict(
    client: httpx.Client, *entities: dict[str, Any], pipeline: str = "loan_default", **extra: Any
) -> httpx.Response:
    return client.post(f"/{pipeline}/predict", json={"entities": list(entities), **extra})


def direct_scores(state: ServingState, version: str, entities: list[dict[str, Any]]) -> list:
    """The version's positive-class score for the entities, computed without the server: the
    model from the safe loader on the Feast online features (request values first)."""
    from mlops_assets.serving.scoring import predict as model_predict
    from mlops_assets.serving.scoring import read_features
    from mlops_resources.model_loading import load_registered_model
    from mlops_resources.profiles import profile_resources

    feast = profile_resources()["feast"].process_config_and_initialize()  # sqlite, or Redis
    rows = [{**{f: None for f in state.spec.feature_names}, **e} for e in entities]
    features = read_features(state.spec, feast, rows, allow_missing=True)
    model = load_registered_model(state.name, version)
    return model_predict(model, features.frame, state.spec).score


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def served(client: httpx.Client, pipeline: str = "loan_default") -> dict[str, Any]:
    return client.get("/pipelines").json()[pipeline]


def shadow_rows(client: httpx.Client) -> float:
    """Rows scored off the response path so far (both versions' predictions are then known)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("mlops_serving_shadow_rows_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_log(state: ServingState) -> Any:
    """The server's request log (every Parquet file written so far)."""
    import pandas as pd

    files = sorted(request_log_folder(state.spec.name).rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def logged_rows(state: ServingState, request_id: str) -> Any:
    log = read_log(state)
    rows = log[log.request_id == request_id] if log is not None else []
    return rows.reset_index(drop=True) if len(rows) else None
