"""Online inference in the loop, end to end on the real server (started on loopback against a
real trained state; nothing mocked): the canary across replicas, batching of concurrent
requests, and the request log feeding online_predictions, model_performance and drift_report.
docs/serving.md."""

from pathlib import Path
from typing import Any

import pytest

from mlops_assets.keys import scoped_name
from mlops_assets.serving.request_log import request_log_folder
from mlops_assets.serving.scoring import entity_share
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLflowResource
from tests.reliability.conftest import trained  # noqa: F401 (fixture)
from tests.serving_support import (  # noqa: F401
    Server,
    ServingState,
    direct_scores,
    logged_rows,
    predict,
    read_log,
    running_server,
    served,
    server_fixture,
    serving_fixture,
    shadow_rows,
    wait_for,
)


def test_canary_is_sticky_across_replicas_and_stops_itself_when_worse(
    serving: ServingState, tmp_path: Path
):
    """Two replicas serve the same spec. Half the entities (by hash of their key) are answered
    by the challenger, the same ones on every request and on both replicas; labels sent back to
    one replica show the canary worse than the champion beyond the rollback margin, so that
    replica stops it: the alias is removed by a Dagster run that audits it like a rollback, and
    both replicas answer everyone with the champion again (the other one by following the
    registry, without a label)."""
    from dagster import DagsterInstance, RunsFilter

    mlflow = MLflowResource()
    mlflow.set_alias(serving.name, CHALLENGER_ALIAS, "3")  # trained on shuffled labels
    keys = sorted(serving.labels)[:300]
    canary_spec = {"canary_fraction": 0.5, "canary_min_labelled": 150}
    with (
        running_server(serving, tmp_path, **canary_spec) as first_replica,
        running_server(serving, tmp_path, **canary_spec) as second_replica,
        first_replica.client() as client,
        second_replica.client() as other,
    ):
        passes = []
        for replica in (client, other):
            wait_for(lambda r=replica: served(r)["canary_routing"], 60, "the canary")
            answers = {}
            for start in range(0, len(keys), 50):
                body = predict(replica, *({"customer_id": k} for k in keys[start : start + 50]))
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

        wait_for(lambda: shadow_rows(client) >= len(keys), 60, "shadow scoring")
        labels = [
            {"request_id": request_id, "customer_id": key, "label": serving.labels[key]}
            for key, (request_id, _) in first.items()
        ]
        outcome = client.post("/loan_default/feedback", json={"labels": labels}).json()
        assert outcome["matched"] == len(labels), outcome
        verdict = outcome["canary"]
        assert verdict["labelled_rows"] == len(labels) and verdict["enough"]
        assert verdict["worse_beyond_margin"].get("roc_auc", 0) > 0.03, verdict

        wait_for(lambda: mlflow.alias_version(serving.name, CHALLENGER_ALIAS) is None, 120, "stop")
        for replica in (client, other):
            wait_for(lambda r=replica: served(r)["challenger"] is None, 30, "the champion alone")
        stopped = wait_for(lambda: served(client)["canary_stopped"].get("3"), 60, "the stop run")
        for replica in (client, other):
            after = predict(replica, *({"customer_id": k} for k in canary[:20])).json()
            answered = {(r["served_by"], r["version"]) for r in after["predictions"]}
            assert answered == {("champion", "1")}
        assert (
            'mlops_serving_canary_stops_total{pipeline="loan_default"} 1.0'
            in client.get("/metrics").text
        )
        assert served(other)["canary_stopped"] == {}  # it followed the registry
    tags = mlflow.version_tags(serving.name, "3")
    assert tags["mlops.canary_stopped_by"].startswith("user:canary_monitor@")
    assert "roc_auc" in tags["mlops.canary_stopped_reason"]
    run_id = tags["mlops.canary_stopped_run_id"]
    assert stopped["run_id"] == run_id
    [run] = DagsterInstance.get().get_runs(RunsFilter(tags={"mlops/action": "canary_stop"}))
    assert run.run_id == run_id and run.tags["mlops/model_version"] == f"{serving.name}/3"
    assert mlflow.champion(serving.name) == "1"


def log_traffic(serving: ServingState, server: Server, day: str, **given: Any) -> list[str]:
    """200 answers for entities of `day` (with the request-time features `given`), their rows
    of the request log copied into that day's folder as if they had been served on that day;
    returns their request ids."""
    import pandas as pd

    state = serving.trained
    offline = state.home / "feast" / "offline" / state.spec.name / f"{day}.parquet"
    keys = sorted(set(pd.read_parquet(offline)[state.spec.entity_key]))[:200]
    with server.client() as client:
        request_ids = [
            predict(client, *({"customer_id": k, **given} for k in keys[i : i + 50])).json()[
                "request_id"
            ]
            for i in range(0, len(keys), 50)
        ]
    wait_for(lambda: all(logged_rows(serving, r) is not None for r in request_ids) or None, 30)
    log = read_log(serving)
    folder = request_log_folder(state.spec.name) / day
    folder.mkdir(parents=True, exist_ok=True)
    log[log.request_id.isin(request_ids)].to_parquet(folder / f"{request_ids[0]}.parquet")
    return request_ids


def materialized(result: Any) -> dict[Any, dict[str, Any]]:
    """Each materialized asset's metadata values, by asset key."""
    return {
        event.asset_key: {
            k: v.value for k, v in event.event_specific_data.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }


def test_online_traffic_feeds_model_performance(
    serving: ServingState, server: Server, tmp_path: Path
):
    """Answers logged by the server become the day's online_predictions, and model_performance
    scores them on the day's delivered labels beside batch_predictions."""
    from dagster import DagsterInstance

    from mlops_assets.keys import FEEDBACK_JOB, asset_key
    from mlops_assets.pipeline import build_definitions

    state = serving.trained
    day = state.trained_day.isoformat()
    log_traffic(serving, server, day)
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", serving={"monitor_online": True}))
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, FEEDBACK_JOB))
    result = job.execute_in_process(partition_key=day, instance=DagsterInstance.get())
    assert result.success
    metadata = materialized(result)
    online = metadata[asset_key(spec, "online_predictions")]
    assert (online["dagster/row_count"], online["requests"]) == (200, 4)
    assert online["answered_by_version"] == {"1": 200}
    performance = metadata[asset_key(spec, "model_performance")]
    assert performance["online_labelled_rows"] == 200
    assert performance["online_model_version"] == "1"
    assert performance["online_live_roc_auc"] > 0.6
    assert performance["online_versions"] == {"1": 200}
    assert "live_roc_auc" in performance  # batch_predictions are still scored beside


def test_online_traffic_feeds_drift_report(serving: ServingState, server: Server, tmp_path: Path):
    """drift_report compares the day's online traffic (the features the model saw, its scores)
    with the reference of the version that served it, beside the batch comparison: traffic
    like the day's own rows does not drift; traffic whose request-time features moved far
    from the training data does, and raises the drift flag the drift sensor reads."""
    from dagster import DagsterInstance

    from mlops_assets.keys import DAILY_JOB, Meta, asset_key
    from mlops_assets.pipeline import build_definitions

    state = serving.trained
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", serving={"monitor_online": True}))
    drift_key = asset_key(spec, "drift_report")
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, DAILY_JOB))
    moved = {"income": 1_900_000.0, "credit_score": 310.0, "debt_to_income": 1.9, "age": 105.0}
    days = {state.trained_day.isoformat(): {}, state.next_day.isoformat(): moved}
    reports = {}
    for day, given in days.items():
        log_traffic(serving, server, day, **given)
        result = job.execute_in_process(
            partition_key=day, instance=DagsterInstance.get(), asset_selection=[drift_key]
        )
        assert result.success
        reports[day] = materialized(result)[drift_key]
        [check] = result.get_asset_check_evaluations()
        detected = reports[day][Meta.DRIFT_DETECTED]
        assert check.passed is not detected and ("online traffic" in check.description)
    online = Meta.ONLINE_PREFIX
    calm, drifted = (reports[day] for day in days)
    assert calm[f"{online}current_rows"] >= 200 and drifted[f"{online}current_rows"] == 200
    assert calm[f"{online}{Meta.MODEL_VERSION}"] == "1"
    assert calm[f"{online}{Meta.DRIFT_DETECTED}"] is False, calm
    assert calm[f"{online}{Meta.DRIFT_SHARE}"] < spec.monitoring.drift.drift_share
    assert drifted[f"{online}{Meta.DRIFT_DETECTED}"] is True, drifted
    assert set(moved) <= set(drifted[f"{online}{Meta.DRIFTED_COLUMNS}"])
    assert drifted[Meta.DRIFT_DETECTED] is True  # what the drift sensor reads
    assert Path(drifted[f"{online}{Meta.DRIFT_REPORT_HTML}"]).is_file()


def batch_metrics(client: Any) -> tuple[float, float]:
    """(batches scored, rows scored) so far, from /metrics (no series before the first)."""
    values = {"count": 0.0, "sum": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for name in ("count", "sum"):
            if line.startswith(f"mlops_serving_batch_rows_{name}{{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["count"], values["sum"]


def test_concurrent_requests_are_scored_in_one_batch(serving: ServingState, tmp_path: Path):
    """Requests that arrive together are scored together (one online read, one model call):
    with a 300 ms batching window, six concurrent requests make one batch; each gets its own
    answer (scores equal to the model's on its own entities, its own request id, logged under
    it), and the one naming an unknown entity is refused alone."""
    import threading

    keys = sorted(serving.labels)[200:208]
    bodies = [[{"customer_id": k}] for k in keys[:4]]
    bodies.append([{"customer_id": k} for k in keys[4:8]])
    bodies.append([{"customer_id": keys[0]}, {"customer_id": "C999999998"}])
    answers: dict[int, Any] = {}
    with (
        running_server(serving, tmp_path, cli=("--batch-wait-ms", "300")) as server,
        server.client() as client,
    ):
        before = batch_metrics(client)
        start = threading.Barrier(len(bodies))

        def send(i: int) -> None:
            with server.client() as own:
                start.wait()
                answers[i] = predict(own, *bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        batches, rows = (a - b for a, b in zip(batch_metrics(client), before, strict=True))
    assert [answers[i].status_code for i in range(len(bodies))] == [200] * 5 + [404]
    assert answers[5].json()["detail"][0]["loc"] == ["body", "entities", 1, "customer_id"]
    assert rows == 8 and batches <= 2, (batches, rows)  # one batch, two if a thread was late
    request_ids = {answers[i].json()["request_id"] for i in range(5)}
    assert len(request_ids) == 5
    for i in range(5):
        body = answers[i].json()
        assert [r["customer_id"] for r in body["predictions"]] == [
            e["customer_id"] for e in bodies[i]
        ]
        expected = direct_scores(serving, "1", bodies[i])
        assert [r["score"] for r in body["predictions"]] == pytest.approx(expected, abs=1e-12)
        logged = wait_for(lambda b=body: logged_rows(serving, b["request_id"]), 30, "the log")
        assert list(logged["customer_id"]) == [e["customer_id"] for e in bodies[i]]
