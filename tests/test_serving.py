"""Online inference end to end: `python -m mlops_assets serve` started on loopback against a real
trained state (MLflow registry with aliases, Feast online store, Dagster instance), nothing
mocked. docs/serving.md."""

import pickle
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlops_assets.spec import SpecError, load_spec
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLflowResource
from tests.reliability.conftest import trained  # noqa: F401 (fixture)
from tests.reliability.test_fail_closed import free_port
from tests.reliability.test_security import Payload
from tests.serving_support import (  # noqa: F401
    Server,
    ServingState,
    direct_scores,
    logged_rows,
    predict,
    served,
    server_fixture,
    serving_fixture,
    wait_for,
)


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
