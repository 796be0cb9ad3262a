"""Online inference end to end: `python -m mlops_assets serve` started on loopback against a real
trained state (MLflow registry with aliases, Feast online store, Dagster instance), nothing
mocked. docs/serving.md."""

import contextlib
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops_assets.keys import LIFECYCLE_JOB, scoped_name
from mlops_assets.serving.request_log import request_log_folder
from mlops_assets.serving.scoring import entity_share
from mlops_assets.spec import SpecError, load_spec
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLflowResource
from tests.conftest import REPO
from tests.reliability.conftest import TrainedState, set_env, trained  # noqa: F401 (fixture)
from tests.reliability.test_fail_closed import free_port
from tests.reliability.test_security import Payload

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

    from mlops_assets.training import build_estimator, log_sklearn_model

    spec = state.spec
    offline = state.home / "feast" / "offline" / spec.name
    rows = pd.concat(pd.read_parquet(p) for p in sorted(offline.glob("*.parquet")))
    X = rows[spec.feature_names]
    y = rows[spec.label].sample(frac=1.0, random_state=0).to_numpy()
    model = build_estimator(spec).fit(X, y)
    with MLflowResource().start_run("shuffled-labels"):
        info = log_sklearn_model(model, spec, X.head(50))
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def serving(trained: TrainedState) -> Iterator[ServingState]:  # noqa: F811
    import pandas as pd
    from dagster import DagsterInstance

    from mlops_assets.pipeline import build_definitions

    saved = set_env({**trained.env, "MLOPS_CONFIG": None})
    try:
        mlflow = MLflowResource()
        spec = trained.spec
        versions = mlflow.client().search_model_versions(f"name='{spec.model_name}'")
        if len(versions) == 1:
            job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
            day = trained.next_day.isoformat()
            assert job.execute_in_process(partition_key=day, instance=DagsterInstance.get()).success
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
def running_server(state: ServingState, tmp: Path, **serving: Any) -> Iterator[Server]:
    """`python -m mlops_assets serve` on the state's spec with a `serving:` section, on a free
    loopback port; waits for /ready; stopped with SIGTERM (it flushes its request log)."""
    spec_path = state.trained.write_spec(
        tmp / "spec.yaml", serving={"refresh_seconds": REFRESH_SECONDS, **serving}
    )
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, **state.trained.env, "PYTHONPATH": str(REPO)}
    env.pop("MLOPS_CONFIG", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets", "serve", "--config", str(spec_path)]
            + ["--port", str(port)],
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


@pytest.fixture(scope="module")
def server(serving: ServingState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
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


def test_serving_spec_section_is_strict(serving: ServingState, tmp_path: Path):
    state = serving.trained
    no_margin = {"performance": {"rollback_margin": {}}}
    cases = {
        "serving.canary_fraction: a canary needs monitoring.performance.rollback_margin": {
            "serving": {"canary_fraction": 0.2},
            "monitoring": no_margin,
        },
        "serving.canary_fraction: Input should be a valid number": {
            "serving": {"canary_fraction": "0.2"}
        },
        "less than or equal to 1": {"serving": {"canary_fraction": 1.5}},
        "serving.refresh_seconds": {"serving": {"refresh_seconds": 0}},
        "serving.canary: unknown key": {"serving": {"canary": 0.2}},
    }
    for expected, overrides in cases.items():
        with pytest.raises(SpecError, match=expected):
            load_spec(state.write_spec(tmp_path / "spec.yaml", **overrides))
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", serving={"canary_fraction": 0.2}))
    assert spec.serving.canary_fraction == 0.2 and spec.serving.refresh_seconds == 10.0


def shadow_rows(client: httpx.Client) -> float:
    """Rows scored off the response path so far (both versions' predictions are then known)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("mlops_serving_shadow_rows_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_canary_is_sticky_and_stops_itself_when_worse(serving: ServingState, tmp_path: Path):
    """Half the entities (by hash of their key) are answered by the challenger, the same ones on
    every request; labels sent back show it worse than the champion beyond the rollback margin,
    so the server stops it: the alias is removed by a Dagster run that audits it like a
    rollback, and the champion answers everyone again."""
    from dagster import DagsterInstance, RunsFilter

    mlflow = MLflowResource()
    mlflow.set_alias(serving.name, CHALLENGER_ALIAS, "3")  # trained on shuffled labels
    keys = sorted(serving.labels)[:300]
    with (
        running_server(serving, tmp_path, canary_fraction=0.5, canary_min_labelled=150) as server,
        server.client() as client,
    ):
        wait_for(lambda: served(client)["canary_routing"], 60, "the canary")
        passes = []
        for _ in range(2):
            answers = {}
            for start in range(0, len(keys), 50):
                body = predict(client, *({"customer_id": k} for k in keys[start : start + 50]))
                assert body.status_code == 200, body.text
                for row in body.json()["predictions"]:
                    answers[row["customer_id"]] = (body.json()["request_id"], row)
            passes.append(answers)
        first, second = passes
        assert {k: r["served_by"] for k, (_, r) in first.items()} == {
            k: r["served_by"] for k, (_, r) in second.items()
        }
        canary = [k for k, (_, r) in first.items() if r["served_by"] == "challenger"]
        assert canary == [k for k in keys if entity_share("loan_default", k) < 0.5]
        assert 0.35 < len(canary) / len(keys) < 0.65
        assert {first[k][1]["version"] for k in canary} == {"3"}
        assert {r["version"] for k, (_, r) in first.items() if k not in canary} == {"1"}

        wait_for(lambda: shadow_rows(client) >= 2 * len(keys), 60, "shadow scoring")
        labels = [
            {"request_id": request_id, "customer_id": key, "label": serving.labels[key]}
            for answers in passes
            for key, (request_id, _) in answers.items()
        ]
        outcome = client.post("/loan_default/feedback", json={"labels": labels}).json()
        assert outcome["matched"] == len(labels), outcome
        verdict = outcome["canary"]
        assert verdict["labelled_rows"] == len(labels) and verdict["enough"]
        assert verdict["worse_beyond_margin"].get("roc_auc", 0) > 0.03, verdict

        wait_for(lambda: mlflow.alias_version(serving.name, CHALLENGER_ALIAS) is None, 120, "stop")
        wait_for(lambda: served(client)["challenger"] is None, 30, "the champion alone")
        stopped = wait_for(lambda: served(client)["canary_stopped"].get("3"), 60, "the stop run")
        after = predict(client, *({"customer_id": k} for k in canary[:20])).json()
        assert {(r["served_by"], r["version"]) for r in after["predictions"]} == {("champion", "1")}
        assert (
            'mlops_serving_canary_stops_total{pipeline="loan_default"} 1.0'
            in client.get("/metrics").text
        )
    tags = mlflow.version_tags(serving.name, "3")
    assert tags["mlops.canary_stopped_by"].startswith("user:canary_monitor@")
    assert "roc_auc" in tags["mlops.canary_stopped_reason"]
    run_id = tags["mlops.canary_stopped_run_id"]
    assert stopped["run_id"] == run_id
    [run] = DagsterInstance.get().get_runs(RunsFilter(tags={"mlops/action": "canary_stop"}))
    assert run.run_id == run_id and run.tags["mlops/model_version"] == f"{serving.name}/3"
    assert mlflow.champion(serving.name) == "1"


def test_predict_one_and_a_batch(serving: ServingState, server: Server):
    keys = sorted(serving.labels)[:40]
    with server.client() as client:
        one = predict(client, {"customer_id": keys[0]})
        assert one.status_code == 200, one.text
        body = one.json()
        assert (body["pipeline"], body["model"], body["version"]) == (
            "loan_default",
            serving.name,
            "1",
        )
        [row] = body["predictions"]
        assert row["customer_id"] == keys[0]
        assert row["label"] in ("0", "1") and 0.0 <= row["score"] <= 1.0
        assert (row["version"], row["served_by"]) == ("1", "champion")
        assert row["features_missing"] is False and row["missing_features"] == []

        batch = predict(client, *({"customer_id": k} for k in [*keys, keys[0]]))
        assert batch.status_code == 200, batch.text
        rows = batch.json()["predictions"]
        assert [r["customer_id"] for r in rows] == [*keys, keys[0]]
        assert {r["version"] for r in rows} == {"1"}
        expected = direct_scores(serving, "1", [{"customer_id": k} for k in [*keys, keys[0]]])
        assert [r["score"] for r in rows] == pytest.approx(expected, abs=1e-12)
        assert rows[0]["score"] == pytest.approx(row["score"], abs=1e-12)

        # Request-time features are used instead of the online store's values.
        given = {"customer_id": keys[1], "income": 5000.0, "region": "north"}
        [answered] = predict(client, given).json()["predictions"]
        assert answered["score"] == pytest.approx(direct_scores(serving, "1", [given])[0])
        assert answered["score"] != pytest.approx(rows[1]["score"])


def test_bad_requests_get_4xx_naming_the_field(serving: ServingState, server: Server):
    key = sorted(serving.labels)[0]
    with server.client() as client:
        unknown = predict(client, {"customer_id": key}, {"customer_id": "C999999999"})
        assert unknown.status_code == 404
        [detail] = unknown.json()["detail"]
        assert detail["loc"] == ["body", "entities", 1, "customer_id"]
        assert detail["type"] == "unknown_entity" and "C999999999" in detail["msg"]

        allowed = predict(client, {"customer_id": "C999999999"}, allow_missing=True)
        assert allowed.status_code == 200
        [row] = allowed.json()["predictions"]
        assert row["features_missing"] is True
        assert row["missing_features"] == serving.spec.feature_names

        complete = {f.name: 1.0 for f in serving.spec.features if f.type == "numeric"}
        complete.update(loan_amount=5000.0, credit_score=600.0, age=30.0)
        complete.update(loan_purpose="car", home_ownership="rent", region="east")
        new_customer = predict(client, {"customer_id": "C999999999", **complete})
        assert new_customer.status_code == 200, new_customer.text  # all features given
        assert new_customer.json()["predictions"][0]["features_missing"] is False

        cases = {
            "income": {"customer_id": key, "income": "lots"},
            "region": {"customer_id": key, "region": "mars"},
            "credit_score": {"customer_id": key, "credit_score": 9000},
            "colour": {"customer_id": key, "colour": "red"},
            "customer_id": {"customer_id": 12},
        }
        for field, entity in cases.items():
            response = predict(client, entity)
            assert response.status_code == 422, (field, response.text)
            assert response.json()["detail"][0]["loc"] == ["body", "entities", 0, field]
        missing_key = predict(client, {"income": 1.0})
        assert missing_key.json()["detail"][0]["loc"] == ["body", "entities", 0, "customer_id"]

        too_many = predict(client, *([{"customer_id": key}] * 1001))
        assert too_many.status_code == 422
        assert too_many.json()["detail"][0]["loc"] == ["body", "entities"]
        empty = predict(client)
        assert empty.status_code == 422
        for raw in (b"{not json", b'{"entities": [{"customer_id": "x", "income": NaN}]}'):
            response = client.post(
                "/loan_default/predict", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, response.text
        huge = client.post(
            "/loan_default/predict",
            content=b" " * 5_000_000,
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413
        assert client.get("/health").status_code == 200
        assert predict(client, {"customer_id": key}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'mlops_serving_errors_total{kind="unknown_entity",pipeline="loan_default"}' in metrics
    assert 'mlops_serving_errors_total{kind="bad_request",pipeline="loan_default"}' in metrics


def test_probes_metrics_and_openapi(serving: ServingState, server: Server):
    with server.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        assert ready["status"] == "ready"
        assert ready["pipelines"]["loan_default"]["champion"] == "1"
        predict(client, {"customer_id": sorted(serving.labels)[0]})
        metrics = client.get("/metrics")
        openapi = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for line in (
        'mlops_serving_requests_total{pipeline="loan_default",status="200"}',
        'mlops_serving_request_seconds_bucket{le="0.05",pipeline="loan_default"}',
        'mlops_serving_request_seconds_count{pipeline="loan_default"}',
        'mlops_serving_model_version{alias="champion",model="loan_default_model",'
        'pipeline="loan_default"} 1.0',
        'mlops_serving_rows_total{pipeline="loan_default",role="champion",version="1"}',
    ):
        assert line in text, line
    assert "/loan_default/predict" in openapi["paths"] and "/predict" in openapi["paths"]
    schema = openapi["components"]["schemas"]["LoanDefaultEntity"]
    assert schema["required"] == ["customer_id"] and "income" in schema["properties"]


def test_promotion_under_load_no_failed_or_mixed_answer(serving: ServingState, server: Server):
    """Requests run all the time while the champion moves v1 -> v2 -> v1 -> v2 (compare-and-set,
    as the gate and rollback move it): every answer is a 200 and names exactly one version,
    and each move serves within the refresh interval plus the load time."""
    mlflow = MLflowResource()
    keys = sorted(serving.labels)
    answers: list[tuple[float, int, set[str], str]] = []
    stop = threading.Event()

    def load() -> None:
        rng = random.Random(threading.get_ident())
        with server.client() as client:
            while not stop.is_set():
                batch = [{"customer_id": k} for k in rng.sample(keys, 5)]
                response = predict(client, *batch)
                body = response.json() if response.status_code == 200 else {}
                rows = {r["version"] for r in body.get("predictions", [])}
                answers.append((time.monotonic(), response.status_code, rows, body.get("version")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    moves = []
    try:
        with server.client() as client:
            for target in ("2", "1", "2"):
                current = mlflow.champion(serving.name)
                mlflow.move_champion(serving.name, target, expected=current)
                moved_at = time.monotonic()
                wait_for(lambda t=target: served(client)["champion"] == t, 60, f"v{target}")
                moves.append((target, moved_at, time.monotonic() - moved_at))
                time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert len(answers) > 50, len(answers)
    failed = [a for a in answers if a[1] != 200]
    assert not failed, failed[:5]
    mixed = [a for a in answers if a[2] != {a[3]}]
    assert not mixed, mixed[:5]
    assert {a[3] for a in answers} == {"1", "2"}
    for target, moved_at, took in moves:
        assert took < 30, f"v{target} served {took:.1f}s after the move"
        later = [a[3] for a in answers if a[0] > moved_at + took + 0.5]
        assert later and later[0] == target
    mlflow.move_champion(serving.name, "1", expected="2")
    with server.client() as client:
        wait_for(lambda: served(client)["champion"] == "1", 60, "v1 back")


def read_log(state: ServingState) -> Any:
    """The server's request log (every Parquet file written so far)."""
    import pandas as pd

    files = sorted(request_log_folder(state.spec.name).rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def logged_rows(state: ServingState, request_id: str) -> Any:
    log = read_log(state)
    rows = log[log.request_id == request_id] if log is not None else []
    return rows.reset_index(drop=True) if len(rows) else None


def test_challenger_shadow_scores_off_the_response_path(serving: ServingState, server: Server):
    mlflow = MLflowResource()
    keys = sorted(serving.labels)[100:130]
    mlflow.set_alias(serving.name, CHALLENGER_ALIAS, "2")
    try:
        with server.client() as client:
            wait_for(lambda: served(client)["challenger"] == "2", 60, "the challenger")
            response = predict(client, *({"customer_id": k} for k in keys))
            assert response.status_code == 200
            body = response.json()
            assert {(r["version"], r["served_by"]) for r in body["predictions"]} == {
                ("1", "champion")
            }
            request_id = body["request_id"]
            logged = wait_for(lambda: logged_rows(serving, request_id), 30, "the request log")
    finally:
        mlflow.delete_alias(serving.name, CHALLENGER_ALIAS)
    assert list(logged["customer_id"]) == keys
    assert set(logged["champion_version"]) == {"1"} and set(logged["challenger_version"]) == {"2"}
    assert set(logged["answered_by"]) == {"champion"} and set(logged["model_version"]) == {"1"}
    assert list(logged["score"]) == pytest.approx([r["score"] for r in body["predictions"]])
    assert list(logged["champion_score"]) == pytest.approx(list(logged["score"]))
    shadow = direct_scores(serving, "2", [{"customer_id": k} for k in keys])
    assert list(logged["challenger_score"]) == pytest.approx(shadow, abs=1e-12)
    assert logged["latency_ms"].gt(0).all()
    assert logged["missing_features"].map(len).eq(0).all()
    assert set(serving.spec.feature_names) <= set(logged.columns)


def test_an_unsafe_champion_is_refused_and_the_previous_keeps_serving(
    serving: ServingState, server: Server, tmp_path: Path
):
    """The champion alias moved to a version whose model file is a pickle: the server refuses it
    through the safe loader (nothing runs), keeps answering with v1, and says so in /ready."""
    import mlflow as mlflow_api

    mlflow = MLflowResource()
    marker = tmp_path / "payload_ran"
    source = mlflow.client().get_model_version(serving.name, "1").source
    folder = Path(mlflow_api.artifacts.download_artifacts(source, dst_path=str(tmp_path)))
    [model_file] = [p for p in folder.iterdir() if p.suffix == ".skops"]
    model_file.write_bytes(pickle.dumps(Payload(marker)))
    tampered = str(mlflow.client().create_model_version(serving.name, folder.as_uri()).version)
    key = sorted(serving.labels)[0]
    mlflow.move_champion(serving.name, tampered, expected="1")
    try:
        with server.client() as client:
            ready = wait_for(
                lambda: (r := client.get("/ready").json())["status"] == "degraded" and r, 60
            )
            error = ready["pipelines"]["loan_default"]["last_error"]["message"]
            assert f"v{tampered} failed (v1 keeps serving)" in error
            assert client.get("/ready").status_code == 200  # still serving
            answer = predict(client, {"customer_id": key})
            assert answer.status_code == 200 and answer.json()["version"] == "1"
            failures = [
                line
                for line in client.get("/metrics").text.splitlines()
                if line.startswith("mlops_serving_model_load_failures_total")
            ]
            assert float(failures[0].rsplit(" ", 1)[1]) >= 1
    finally:
        mlflow.move_champion(serving.name, "1", expected=tampered)
    assert not marker.exists(), "the tampered artifact ran code while loading"
    with server.client() as client:
        wait_for(lambda: client.get("/ready").json()["status"] == "ready", 60, "ready again")


def test_online_traffic_feeds_model_performance(
    serving: ServingState, server: Server, tmp_path: Path
):
    """Answers logged by the server become the day's online_predictions, and model_performance
    scores them on the day's delivered labels beside batch_predictions."""
    import pandas as pd
    from dagster import DagsterInstance

    from mlops_assets.keys import FEEDBACK_JOB, asset_key
    from mlops_assets.pipeline import build_definitions

    state = serving.trained
    day = state.trained_day.isoformat()
    offline = state.home / "feast" / "offline" / state.spec.name / f"{day}.parquet"
    keys = sorted(set(pd.read_parquet(offline)[state.spec.entity_key]))[:200]
    with server.client() as client:
        request_ids = [
            predict(client, *({"customer_id": k} for k in keys[i : i + 50])).json()["request_id"]
            for i in range(0, len(keys), 50)
        ]
    wait_for(lambda: all(logged_rows(serving, r) is not None for r in request_ids) or None, 30)
    log = read_log(serving)
    traffic = log[log.request_id.isin(request_ids)]
    folder = request_log_folder(state.spec.name) / day  # as if that traffic came on that day
    folder.mkdir(parents=True)
    traffic.to_parquet(folder / "traffic.parquet")

    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", serving={"monitor_online": True}))
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, FEEDBACK_JOB))
    result = job.execute_in_process(partition_key=day, instance=DagsterInstance.get())
    assert result.success
    metadata = {
        event.asset_key: {
            k: v.value for k, v in event.event_specific_data.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    online = metadata[asset_key(spec, "online_predictions")]
    assert (online["dagster/row_count"], online["requests"]) == (200, 4)
    assert online["answered_by_version"] == {"1": 200}
    performance = metadata[asset_key(spec, "model_performance")]
    assert performance["online_labelled_rows"] == 200
    assert performance["online_model_version"] == "1"
    assert performance["online_live_roc_auc"] > 0.6
    assert performance["online_versions"] == {"1": 200}
    assert "live_roc_auc" in performance  # batch_predictions are still scored beside


def test_several_pipelines_behind_one_server(serving: ServingState, tmp_path: Path):
    """Each pipeline has its own routes; one without a champion answers 503 and keeps the
    server not ready, while the other answers."""
    import uvicorn

    from mlops_assets.serving.server import build_app

    other = serving.spec.model_copy(update={"name": "loan_default_other"})
    app = build_app([serving.spec, other])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_for(lambda: served(client)["champion"] == "1" if server.started else None, 120)
            key = sorted(serving.labels)[0]
            assert predict(client, {"customer_id": key}).status_code == 200
            none = client.post(
                "/loan_default_other/predict", json={"entities": [{"customer_id": key}]}
            )
            assert none.status_code == 503
            assert "loan_default_other_model has no champion" in none.json()["detail"][0]["msg"]
            assert (
                client.post("/predict", json={"entities": [{"customer_id": key}]}).status_code
                == 404
            )
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
            assert set(client.get("/pipelines").json()) == {"loan_default", "loan_default_other"}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
