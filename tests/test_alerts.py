"""Alerts (issue 19; docs/alerts.md): the alerts sensor tells a loopback webhook, Slack and Teams
endpoint and a local SMTP server (aiosmtpd) what the pipeline did: once per event, one message
per channel per tick, links to the Dagster run/asset and the MLflow version; a channel that
refuses connections keeps its alerts and shows why; secrets never show."""

import email
import email.policy
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
    instance_for_test,
)

from mlops_assets.alerts import ledger_key, load_ledger
from mlops_assets.demo_data import DEMO_START, write_demo_data
from mlops_assets.keys import (
    ALERTS_SENSOR,
    CHANGE_DAY_TAG,
    FEEDBACK_JOB,
    INGEST_JOB,
    REPLACED_TAG,
    RETRAIN_JOB,
    ROLLBACK_JOB,
    ROLLBACK_OP,
    TRIGGER_TAG,
    asset_key,
    scoped_name,
)
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import MLflowResource
from tests.conftest import write_spec

UI = "http://dagster.test:3000"
MLFLOW_UI = "http://127.0.0.1:5000"


# Loopback servers ------------------------------------------------------------------------------


def bind_below_32768(make):
    """Start a server on a free 127.0.0.1 port below 32768 (not an ephemeral one)."""
    for _ in range(200):
        port = random.randrange(20000, 32768)
        try:
            return make(port), port
        except OSError:
            continue
    raise RuntimeError("no free port below 32768")


def refused_port() -> int:
    """A port below 32768 where nothing listens: connections are refused."""

    def probe(port: int) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
        return port

    return bind_below_32768(probe)[1]


class Receiver:
    """A loopback HTTP server: every POST is recorded (path, headers, body); Slack's Web API
    answers {"ok": true}."""

    def __init__(self, port: int | None = None) -> None:
        self.posts: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                receiver.posts.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: object) -> None:
                pass

        if port is None:
            self.server, self.port = bind_below_32768(
                lambda p: ThreadingHTTPServer(("127.0.0.1", p), Handler)
            )
        else:
            self.server, self.port = ThreadingHTTPServer(("127.0.0.1", port), Handler), port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def take(self, prefix: str) -> list[dict]:
        """The POSTs to paths starting with `prefix` since the last take, removed."""
        taken = [p for p in self.posts if p["path"].startswith(prefix)]
        self.posts = [p for p in self.posts if not p["path"].startswith(prefix)]
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


class Mailbox:
    """aiosmtpd's handler: messages received, and the logins it accepted."""

    def __init__(self, password: str) -> None:
        self.password, self.messages, self.logins = password, [], []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(f"Subject: {message['Subject']}\n\n{message.get_content()}")
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = auth_data.password.decode() == self.password
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


SMTP_PASSWORD = "smtp-pa55-never-shown"


@pytest.fixture
def smtp():
    mailbox = Mailbox(SMTP_PASSWORD)

    def start(port: int) -> Controller:
        controller = Controller(
            mailbox,
            hostname="127.0.0.1",
            port=port,
            authenticator=mailbox.authenticate,
            auth_require_tls=False,
        )
        controller.start()
        return controller

    controller, port = bind_below_32768(start)
    mailbox.port = port
    yield mailbox
    controller.stop()


# Specs, ticks and real events -------------------------------------------------------------------


def alerts_spec(base: Path, target: Path, channels: list[dict], **settings: object):
    """The spec at `base` with an alerts section."""
    import yaml

    raw = yaml.safe_load(base.read_text())
    raw["alerts"] = {"dagster_ui_url": UI, "channels": channels, **settings}
    target.write_text(yaml.safe_dump(raw))
    return load_spec(target)


def webhook(receiver: Receiver, name: str = "hook", **extra: object) -> dict:
    return {"type": "webhook", "name": name, "url": receiver.url(f"/{name}"), **extra}


def email_channel(mailbox: Mailbox, **extra: object) -> dict:
    return {
        "type": "email",
        "name": "mail",
        "host": "127.0.0.1",
        "port": mailbox.port,
        "security": "none",
        "username": "mlops",
        "password": {"env": "ALERTS_SMTP_PASSWORD"},
        "sender": "mlops@example.test",
        "recipients": ["team@example.test"],
        **extra,
    }


def slack_channel(receiver: Receiver, **extra: object) -> dict:
    """Slack's Web API played by the loopback receiver."""
    return {
        "type": "slack",
        "name": "slack",
        "token": {"env": "ALERTS_SLACK_TOKEN"},
        "channel": "#ml-alerts",
        "api_url": receiver.url("/slack/api/"),
        **extra,
    }


class Sensor:
    """Ticks the pipeline's alerts sensor like the daemon: the cursor carries over."""

    def __init__(self, spec, instance: DagsterInstance) -> None:
        self.defs = build_definitions(spec, {"mlflow": MLflowResource(ui_url=MLFLOW_UI)})
        self.instance, self.cursor = instance, None
        self.name = scoped_name(spec, ALERTS_SENSOR)

    def tick(self, cursor: str | None | bool = True):
        """One tick; cursor=None: as after a restart that lost the cursor."""
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursor if cursor is True else cursor,
            definitions=self.defs,
            resources={"mlflow": self.defs.resources["mlflow"]},
        ) as context:
            data = self.defs.resolve_sensor_def(self.name).evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def run(self, job: str, partition: str | None = None, **kwargs: object):
        """A real run of one of the pipeline's jobs in the sensor's instance."""
        pipeline = self.name.rpartition("__")[0]
        return self.defs.resolve_job_def(scoped_name(pipeline, job)).execute_in_process(
            partition_key=partition, instance=self.instance, raise_on_error=False, **kwargs
        )


def payloads(posts: list[dict]) -> list[dict]:
    return [json.loads(p["body"]) for p in posts]


def one_digest(receiver: Receiver, path: str = "/hook") -> list[dict]:
    """The alerts of the single message the webhook received since the last call."""
    posts = receiver.take(path)
    assert len(posts) == 1, [p["body"][:300] for p in posts]
    document = payloads(posts)[0]
    assert document["count"] == len(document["alerts"])
    return document["alerts"]


def link_urls(alert: dict) -> dict[str, str]:
    return {link["label"]: link["url"] for link in alert["links"]}


def real_records(instance: DagsterInstance, spec, asset: str) -> list:
    return instance.fetch_materializations(asset_key(spec, asset), limit=1000).records


def metadata(record) -> dict:
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


# The lifecycle's history -----------------------------------------------------------------------


def test_lifecycle_history_is_one_digest_per_channel_and_never_sent_twice(
    lifecycle, receiver, smtp, tmp_path, monkeypatch
):
    """Switched on over the demo story's instance: every drift, degradation, gate verdict,
    retraining (and rollback, blocked day or failed run other tests left) is one alert; each
    channel gets one message holding what it asked for; a restart that lost the cursor, and a
    second tick, send nothing."""
    monkeypatch.setenv("ALERTS_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("ALERTS_SLACK_TOKEN", "xoxb-slack-token")
    monkeypatch.setenv("ALERTS_TEAMS_URL", receiver.url("/teams/hook-secret"))
    spec = alerts_spec(
        lifecycle["spec_path"],
        tmp_path / "spec.yaml",
        [
            webhook(receiver),
            email_channel(smtp),
            slack_channel(receiver, events=["gate_verdict", "drift"]),
            {
                "type": "msteams",
                "name": "teams",
                "hook_url": {"env": "ALERTS_TEAMS_URL"},
                "min_severity": "error",
            },
        ],
    )
    instance = DagsterInstance.get()  # the lifecycle's instance (its DAGSTER_HOME)
    instance.daemon_cursor_storage.set_cursor_values(
        {ledger_key(f"{spec.name}__alerts_sensor"): ""}
    )
    sensor = Sensor(spec, instance)
    data = sensor.tick()
    alerts = one_digest(receiver)
    by_kind: dict[str, list[dict]] = {}
    for alert in alerts:
        by_kind.setdefault(alert["kind"], []).append(alert)
    assert len({a["id"] for a in alerts}) == len(alerts)

    # One alert per real event of each kind.
    flagged = [
        r for r in real_records(instance, spec, "drift_report") if metadata(r)["drift_detected"]
    ]
    degraded = [
        r for r in real_records(instance, spec, "model_performance") if metadata(r)["degraded"]
    ]
    verdicts = real_records(instance, spec, "model_promotion")
    blocked = [
        r for r in real_records(instance, spec, "validated_data") if not metadata(r)["valid"]
    ]
    assert flagged and degraded and verdicts
    assert {a["id"] for a in by_kind["drift"]} == {f"drift:{r.storage_id}" for r in flagged}
    assert {a["id"] for a in by_kind["performance_degraded"]} == {
        f"performance_degraded:{r.storage_id}" for r in degraded
    }
    assert {a["id"] for a in by_kind["gate_verdict"]} == {
        f"gate_verdict:{r.storage_id}" for r in verdicts
    }
    assert {a["id"] for a in by_kind.get("data_blocked", [])} == {
        f"data_blocked:{r.storage_id}" for r in blocked
    }
    retrains = instance.get_runs(RunsFilter(job_name=scoped_name(spec, RETRAIN_JOB)))
    assert retrains
    assert {a["id"] for a in by_kind["retraining"]} == {f"retraining:{r.run_id}" for r in retrains}
    rollbacks = instance.get_runs(
        RunsFilter(job_name=scoped_name(spec, ROLLBACK_JOB), statuses=[DagsterRunStatus.SUCCESS])
    )
    assert {a["id"] for a in by_kind.get("rollback", [])} == {
        f"rollback:{r.run_id}" for r in rollbacks
    }
    failed = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    blocked_runs = {r.run_id for r in blocked}
    assert {a["id"] for a in by_kind.get("run_failed", [])} == {
        f"run_failed:{r.run_id}"
        for r in failed
        if r.job_name.startswith(f"{spec.name}__") and r.run_id not in blocked_runs
    }

    # Content and links of the real drift, degradation, promotion and retraining.
    record, alert = (
        flagged[-1],
        next(a for a in by_kind["drift"] if a["id"].endswith(f":{flagged[-1].storage_id}")),
    )
    meta = metadata(record)
    assert f"drift share {meta['drift_share']:.2f}" in alert["title"]
    assert all(column in alert["details"][0] for column in meta["drifted_columns"])
    links = link_urls(alert)
    assert links["Dagster run"] == f"{UI}/runs/{record.run_id}"
    assert links["Dagster asset loan_default/drift_report"] == (
        f"{UI}/assets/loan_default/drift_report?view=partitions&partition={record.partition_key}"
    )
    version = meta["model_version"]
    assert links[f"MLflow model v{version}"] == MLflowResource(ui_url=MLFLOW_UI).model_version_url(
        spec.model_name, version
    )
    performance = metadata(degraded[-1])
    [text] = [
        a
        for a in by_kind["performance_degraded"]
        if a["id"].endswith(f":{degraded[-1].storage_id}")
    ]
    for metric in performance["degraded_metrics"]:
        live, holdout = performance[f"live_{metric}"], performance[f"holdout_{metric}"]
        expected = f"{metric}: live {live:.4f} vs holdout {holdout:.4f}"
        assert any(line.startswith(expected) for line in text["details"])
    promoted = [a for a in by_kind["gate_verdict"] if "promoted to champion" in a["title"]]
    assert promoted and all(
        any(label.startswith("MLflow candidate v") for label in link_urls(a)) for a in promoted
    )
    [retrain] = [a for a in by_kind["retraining"] if a["id"] == f"retraining:{retrains[-1].run_id}"]
    assert retrains[-1].tags[TRIGGER_TAG] in retrain["title"]
    assert "launched by sensor loan_default__drift_sensor" in retrain["details"]

    # Each channel: one message, with what it chose.
    [mail] = smtp.take()
    assert all(a["title"] in mail for a in alerts) and smtp.logins == ["mlops"]
    [slack] = receiver.take("/slack/api/chat.postMessage")
    slack_text = (
        json.loads(slack["body"])["text"] if slack["body"].startswith("{") else slack["body"]
    )
    assert slack["headers"]["Authorization"] == "Bearer xoxb-slack-token"
    chosen = by_kind["gate_verdict"] + by_kind["drift"]
    assert all(a["title"].split(": ", 1)[1][:40] in slack_text for a in chosen)
    assert "degraded" not in slack_text
    [teams] = receiver.take("/teams/")
    errors = [a for a in alerts if a["severity"] == "error"]
    assert errors and all(a["title"] in teams["body"] for a in errors)
    assert not any(a["title"] in teams["body"] for a in alerts if a["severity"] != "error")
    assert f"{len(alerts)} new alert(s)" in data.skip_message

    # A restart that lost the cursor re-reads the lookback window: nothing is sent again.
    again = sensor.tick(cursor=None)
    assert "0 new alert(s)" in again.skip_message
    assert receiver.posts == [] and smtp.take() == []
    sensor.tick()
    assert receiver.posts == [] and smtp.take() == []


# Each kind of event, one at a time, in a fresh home -----------------------------------------------


def lifecycle_events(lifecycle) -> dict[str, tuple]:
    """Real results of the demo story to report again elsewhere: a flagged drift_report, a
    degraded model_performance and a promotion that moved the champion (key, partition,
    metadata)."""
    instance = DagsterInstance.from_config(str(lifecycle["home"] / "dagster"))
    spec = lifecycle["spec"]

    def first(asset: str, flag: str):
        record = next(r for r in real_records(instance, spec, asset) if metadata(r).get(flag))
        return record.partition_key, dict(record.asset_materialization.metadata)

    return {
        "drift_report": first("drift_report", "drift_detected"),
        "model_performance": first("model_performance", "degraded"),
        "model_promotion": first("model_promotion", "champion_moved"),
    }


def report(instance: DagsterInstance, spec, asset: str, event: tuple) -> None:
    partition, meta = event
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=asset_key(spec, asset), partition=partition, metadata=meta)
    )


def corrupt(path: Path) -> None:
    df = pd.read_parquet(path)
    df.loc[0:4, "income"] = None  # five nulls
    df.to_parquet(path, index=False)


def registered_versions(mlflow: MLflowResource, name: str, tmp_path: Path) -> None:
    """v1 (blessed) and v2 (champion, replaced v1) in the home's MLflow registry."""
    client = mlflow.client()
    client.create_registered_model(name)
    for version in ("1", "2"):
        client.create_model_version(name, source=(tmp_path / f"model{version}").as_uri())
    mlflow.tag_version(name, "1", {"mlops.blessed": True})
    mlflow.tag_version(name, "2", {"mlops.blessed": True, REPLACED_TAG: "1"})
    mlflow.set_alias(name, "champion", "2")


def test_each_event_kind_is_one_message_with_its_content_and_links(
    lifecycle, home, receiver, smtp, tmp_path, monkeypatch
):
    real = lifecycle_events(lifecycle)
    monkeypatch.setenv("ALERTS_SMTP_PASSWORD", SMTP_PASSWORD)
    spec = alerts_spec(
        write_spec(tmp_path / "demo.yaml"),
        tmp_path / "spec.yaml",
        [webhook(receiver), email_channel(smtp)],
    )
    write_demo_data(home / "demo_data", start=DEMO_START, days=2, rows_per_day=100)
    day = DEMO_START.isoformat()
    corrupt(home / "demo_data" / f"loans_{day}.parquet")
    mlflow = MLflowResource(ui_url=MLFLOW_UI)
    with instance_for_test() as instance:
        sensor = Sensor(spec, instance)
        assert "0 new alert(s)" in sensor.tick().skip_message and receiver.posts == []

        # A day blocked by the GX gate: the rules and sample values; the failed run is told
        # by this alert, not a second one.
        blocked = sensor.run(INGEST_JOB, day)
        assert not blocked.success
        sensor.tick()
        [alert] = one_digest(receiver)
        assert alert["kind"] == "data_blocked" and alert["severity"] == "error"
        assert f"data of {day} blocked by the GX gate" in alert["title"]
        assert any(
            d.startswith("- expect_column_values_to_not_be_null(income): 5 of 100 rows, e.g.")
            for d in alert["details"]
        )
        assert link_urls(alert)["Dagster run"] == f"{UI}/runs/{blocked.run_id}"
        assert link_urls(alert)["Dagster asset loan_default/validated_data"] == (
            f"{UI}/assets/loan_default/validated_data?view=checks&partition={day}"
        )
        [mail] = smtp.take()
        assert f"Subject: [mlops error] loan_default: data of {day} blocked" in mail

        # Drift, degradation and a promotion: the demo story's real results, reported again.
        for asset, kind in (
            ("drift_report", "drift"),
            ("model_performance", "performance_degraded"),
            ("model_promotion", "gate_verdict"),
        ):
            report(instance, spec, asset, real[asset])
            sensor.tick()
            [alert] = one_digest(receiver)
            assert alert["kind"] == kind
            meta = {k: getattr(v, "value", v) for k, v in real[asset][1].items()}
            version = meta.get("model_version") or meta.get("candidate_version")
            links = link_urls(alert)
            assert mlflow.model_version_url(spec.model_name, version) in links.values()
            assert "Dagster run" not in links  # reported without a run
            assert any(label.startswith(f"Dagster asset loan_default/{asset}") for label in links)
            assert len(smtp.take()) == 1
        assert "promoted to champion" in alert["title"]

        # A retraining the drift sensor would launch, which fails: why it started, and the
        # failure's root cause, in one digest.
        why = "drift_report 2024-01-02: drift share 0.56 (threshold 0.3) against v2"
        retrain = sensor.run(
            RETRAIN_JOB,
            "2024-01-02",
            tags={TRIGGER_TAG: why, CHANGE_DAY_TAG: "2024-01-02", "dagster/sensor_name": "x"},
        )
        assert not retrain.success
        sensor.tick()
        started, failed = one_digest(receiver)
        assert started["kind"] == "retraining" and why in started["title"]
        assert "training window starts at the change of 2024-01-02" in started["details"]
        assert failed["kind"] == "run_failed" and failed["id"] == f"run_failed:{retrain.run_id}"
        assert (
            "retrain run failed for 2024-01-02: training_set 2024-01-02: no feature data"
            in (failed["title"])
        )
        assert link_urls(failed)["Dagster run"] == f"{UI}/runs/{retrain.run_id}"
        assert len(smtp.take()) == 1

        # A step that fails after its retries: the error it raised, not "Exceeded max_retries".
        feedback = sensor.run(FEEDBACK_JOB, "2024-01-02")
        assert not feedback.success
        sensor.tick()
        [failed] = one_digest(receiver)
        assert "FileNotFoundError" in failed["title"] and "max_retries" not in json.dumps(failed)
        assert len(smtp.take()) == 1

        # A rollback, then a second request for the same version: skipped.
        registered_versions(mlflow, spec.model_name, tmp_path)
        config = {"reason": "worse on labelled data", "from_version": "2"}
        run_config = {"ops": {scoped_name(spec, ROLLBACK_OP): {"config": config}}}
        assert sensor.run(ROLLBACK_JOB, run_config=run_config).success
        sensor.tick()
        [alert] = one_digest(receiver)
        assert alert["kind"] == "rollback" and alert["severity"] == "warning"
        assert alert["title"] == "loan_default: champion rolled back from v2 to v1"
        assert "reason: worse on labelled data" in alert["details"]
        assert link_urls(alert)["MLflow champion v1"] == mlflow.model_version_url(
            spec.model_name, "1"
        )
        assert sensor.run(ROLLBACK_JOB, run_config=run_config).success
        sensor.tick()
        [alert] = one_digest(receiver)
        assert alert["severity"] == "info" and alert["title"].endswith(
            "rollback skipped: the champion already moved"
        )
        assert "requested from v2" in alert["details"][0]
        assert len(smtp.take()) == 2

        # Nothing happened since: nothing is sent.
        sensor.tick()
        assert receiver.posts == [] and smtp.take() == []


# A channel that is down -----------------------------------------------------------------------


def test_a_channel_that_refuses_connections_fails_no_run_and_keeps_its_alerts(
    lifecycle, home, receiver, tmp_path
):
    real = lifecycle_events(lifecycle)
    down = refused_port()
    spec = alerts_spec(
        write_spec(tmp_path / "demo.yaml"),
        tmp_path / "spec.yaml",
        [
            {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{down}/down"},
            webhook(receiver, "up"),
        ],
        attempts=2,
        backoff_seconds=0.01,
        max_backoff_seconds=3,
        max_pending=2,
    )
    with instance_for_test() as instance:
        sensor = Sensor(spec, instance)
        sensor.tick()
        # A run while the channel is down succeeds (no champion: a skipped rollback).
        config = {"reason": "test", "from_version": "7"}
        run_config = {"ops": {scoped_name(spec, ROLLBACK_OP): {"config": config}}}
        assert sensor.run(ROLLBACK_JOB, run_config=run_config).success
        report(instance, spec, "drift_report", real["drift_report"])
        data = sensor.tick()  # no exception: the tick reports the failure
        assert "down: NOT SENT, 2 alert(s) kept for retry" in data.skip_message
        assert "Connection refused" in data.skip_message
        assert len(one_digest(receiver, "/up")) == 2
        ledger = load_ledger(instance, sensor.name)
        assert len(ledger["channels"]["down"]["pending"]) == 2

        # The next tick waits (backoff); a third alert pushes the oldest out (max_pending 2).
        report(instance, spec, "model_promotion", real["model_promotion"])
        data = sensor.tick()
        assert (
            "down: 2 alert(s) waiting" in data.skip_message and "backing off" in data.skip_message
        )
        assert len(one_digest(receiver, "/up")) == 1

        # The channel comes back: one digest of what was kept, saying what was dropped; once.
        back = Receiver(down)
        try:
            time.sleep(3.1)  # max_backoff_seconds
            data = sensor.tick()
            [document] = payloads(back.take("/down"))
            assert [a["kind"] for a in document["alerts"]] == ["drift", "gate_verdict"]
            assert "1 older alert(s) were dropped" in document["text"]
            assert "down: sent 2" in data.skip_message
            sensor.tick()
            sensor.tick(cursor=None)
            assert back.posts == [] and receiver.posts == []
        finally:
            back.close()


# Secrets ----------------------------------------------------------------------------------------


def test_secrets_never_appear_in_messages_logs_or_state(
    lifecycle, home, receiver, smtp, tmp_path, monkeypatch, caplog
):
    real = lifecycle_events(lifecycle)
    secrets = {
        "ALERTS_SLACK_TOKEN": "xoxb-secret-slack-0001",
        "ALERTS_TEAMS_URL": receiver.url("/teams/secret-teams-path-0002"),
        "ALERTS_HOOK_TOKEN": "Bearer secret-hook-0003",
        "ALERTS_SMTP_PASSWORD": SMTP_PASSWORD,
        "ALERTS_DOWN_URL": f"http://127.0.0.1:{refused_port()}/secret-down-0004",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALERTS_UNSET", raising=False)
    spec = alerts_spec(
        write_spec(tmp_path / "demo.yaml"),
        tmp_path / "spec.yaml",
        [
            webhook(receiver, headers={"Authorization": {"env": "ALERTS_HOOK_TOKEN"}}),
            email_channel(smtp),
            slack_channel(receiver),
            {"type": "msteams", "name": "teams", "hook_url": {"env": "ALERTS_TEAMS_URL"}},
            # requests names the URL in its connection errors: the secret path is masked
            {"type": "msteams", "name": "down", "hook_url": {"env": "ALERTS_DOWN_URL"}},
            {"type": "msteams", "name": "unset", "hook_url": {"env": "ALERTS_UNSET"}},
        ],
        attempts=1,
    )
    # An event whose text carries a secret (a leak upstream) is masked before it is sent.
    partition, meta = real["drift_report"]
    leaky = {**meta, "drift_report_html": f"/reports/{secrets['ALERTS_SLACK_TOKEN']}.html"}
    with instance_for_test() as instance:
        sensor = Sensor(spec, instance)
        report(instance, spec, "drift_report", (partition, leaky))
        caplog.set_level("DEBUG")
        last_event = instance.event_log_storage.get_maximum_record_id()
        data = sensor.tick()
        state = json.dumps(load_ledger(instance, sensor.name)) + (data.cursor or "")
        # The sensor writes no event or metadata of its own: nothing there to leak.
        assert instance.event_log_storage.get_maximum_record_id() == last_event
        sensor_text = sensor.defs.resolve_sensor_def(sensor.name).description

    posts = receiver.posts
    assert {p["path"] for p in posts} == {
        "/hook",
        "/slack/api/chat.postMessage",
        "/teams/secret-teams-path-0002",
    }
    [hook] = [p for p in posts if p["path"] == "/hook"]
    [slack] = [p for p in posts if p["path"].startswith("/slack")]
    assert hook["headers"]["Authorization"] == secrets["ALERTS_HOOK_TOKEN"]  # used, not shown
    assert slack["headers"]["Authorization"] == f"Bearer {secrets['ALERTS_SLACK_TOKEN']}"
    [mail] = smtp.take()
    assert smtp.logins == ["mlops"]
    assert "/reports/***.html" in hook["body"]
    assert "down: NOT SENT" in data.skip_message and "with url: ***" in data.skip_message
    assert "unset: NOT SENT" in data.skip_message
    assert "environment variable ALERTS_UNSET is not set" in data.skip_message
    shown = [p["body"] for p in posts] + [mail, data.skip_message, state, caplog.text]
    shown.append(sensor_text)
    for value in secrets.values():
        secret = value.rpartition("/")[2] if value.startswith("http") else value
        for text in shown:
            assert secret not in text


# The spec's alerts section -----------------------------------------------------------------------


def test_alerts_section_is_strict_and_the_sensor_is_off_by_default(tmp_path):
    """Secrets only as {env: NAME}; unknown keys, a missing setting and duplicated names are
    refused with their key path; a defs.yaml takes the same section; the sensor is named after
    the pipeline and stopped until switched on."""
    from dagster import DefaultSensorStatus

    from mlops_assets.component import TabularMLPipeline
    from mlops_assets.spec import SpecError

    slack = {"type": "slack", "name": "s", "channel": "#a", "token": {"env": "SLACK_TOKEN"}}
    refused = {
        "alerts.channels.0.slack.token": {**slack, "token": "xoxb-written-in-the-spec"},
        "alerts.channels.0.webhook.url": {"type": "webhook", "name": "w"},
        "alerts.channels.0.email.recipients": {
            "type": "email",
            "name": "m",
            "host": "h",
            "sender": "a@b.c",
            "recipients": [],
        },
        "alerts.channels.0.msteams.hook_urls": {
            "type": "msteams",
            "name": "t",
            "hook_url": {"env": "X"},
            "hook_urls": 1,
        },
    }
    for key, channel in refused.items():
        with pytest.raises(SpecError, match=key.replace(".", r"\.")):
            load_spec(write_spec(tmp_path / "bad.yaml", alerts={"channels": [channel]}))
    with pytest.raises(SpecError, match="duplicated alert channel names"):
        load_spec(write_spec(tmp_path / "bad.yaml", alerts={"channels": [slack, slack]}))

    import yaml

    attributes = yaml.safe_load(
        write_spec(tmp_path / "ok.yaml", alerts={"channels": [slack]}).read_text()
    )
    TabularMLPipeline.get_model_cls().model_validate(attributes)
    spec = load_spec(tmp_path / "ok.yaml")
    sensor = build_definitions(spec).resolve_sensor_def("loan_default__alerts_sensor")
    assert sensor.default_status == DefaultSensorStatus.STOPPED
    assert "s (slack)" in sensor.description and "SLACK_TOKEN" not in sensor.description
