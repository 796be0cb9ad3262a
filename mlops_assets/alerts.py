"""The alerts sensor: tells people what the pipeline did, on the channels of its spec.

`<pipeline>__alerts_sensor` (off by default, on the Automation page) reads the pipeline's new
events from the instance's event log (mlops_assets/alert_events.py), queues each new alert for
the channels that want it, and sends each channel's queue as one message per tick (a digest
when there are several); mlops_resources/notify.py does the sending, retries and backoff.

No storms, no loss:
- The cursor holds each stream's read position (an event log storage id). The ids of the alerts
  already queued, each channel's queue and its failures (the ledger) are kept in the instance's
  key-value store under `mlops_alerts:<sensor name>`, apart from the cursor: a sensor whose
  cursor is lost (reset, renamed code location) reads the last `lookback_hours` again and sends
  only what the ledger has not seen. The ledger is written before the tick returns, so an event
  read twice is one alert.
- A channel that is down keeps its queue (bounded) and is tried again on later ticks with
  exponential backoff; the tick's skip reason and log say what was not sent and why, with every
  secret replaced by `***`. Alerts run in the sensor daemon, not in a run, so no channel can
  fail or hold up a pipeline run.
"""

from __future__ import annotations

import json
import os
import time
from functools import cache
from typing import Any

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mlops_assets.alert_channels import build_channels
from mlops_assets.alert_events import AlertReader, Links
from mlops_assets.keys import ALERTS_SENSOR, scoped_name
from mlops_assets.spec import PipelineSpec
from mlops_resources.notify import Ledger, Policy, deliver, prune, redact, route

UI_URL_ENV = "MLOPS_DAGSTER_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
LEDGER_PREFIX = "mlops_alerts:"
SECONDS_PER_HOUR = 3600


def dagster_ui_url(spec: PipelineSpec) -> str:
    """The Dagster UI's base URL for links: the spec's, else $MLOPS_DAGSTER_UI_URL, else the
    local `make dev` address."""
    url = spec.alerts.dagster_ui_url or os.environ.get(UI_URL_ENV) or DEFAULT_UI_URL
    return url.rstrip("/")


def ledger_key(sensor_name: str) -> str:
    return f"{LEDGER_PREFIX}{sensor_name}"


def load_ledger(instance: DagsterInstance, sensor_name: str) -> Ledger:
    """The sensor's ledger from the instance's key-value store ({} when there is none)."""
    key = ledger_key(sensor_name)
    stored = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    return json.loads(stored) if stored else {}


def save_ledger(instance: DagsterInstance, sensor_name: str, ledger: Ledger) -> None:
    instance.daemon_cursor_storage.set_cursor_values({ledger_key(sensor_name): json.dumps(ledger)})


def policy_of(spec: PipelineSpec) -> Policy:
    alerts = spec.alerts
    return Policy(
        attempts=alerts.attempts,
        backoff_seconds=alerts.backoff_seconds,
        retry_base_seconds=alerts.interval_seconds,
        max_backoff_seconds=alerts.max_backoff_seconds,
        max_pending=alerts.max_pending,
        budget_seconds=alerts.tick_budget_seconds,
    )


def registry_links(context: SensorEvaluationContext, spec: PipelineSpec) -> Links:
    """Links through the `mlflow` resource, built only when an alert needs one (building it
    imports mlflow); the champion is read at most once per tick."""

    def model_version_url(version: str) -> str:
        return context.resources.mlflow.model_version_url(spec.model_name, version)

    @cache
    def lookup() -> tuple[str | None, Exception | None]:
        try:
            return context.resources.mlflow.champion(spec.model_name), None
        except Exception as exc:  # the alerts go out without the champion's link
            context.log.warning(f"champion of {spec.model_name} unknown: {exc}")
            return None, exc

    def champion() -> str | None:
        version, error = lookup()
        if error is not None:
            raise error
        return version

    return Links(dagster_ui_url(spec), model_version_url, champion)


def alerts_tick(
    context: SensorEvaluationContext, spec: PipelineSpec, job_names: list[str]
) -> SensorResult:
    """One tick: read new events, queue their alerts, send every channel's queue."""
    alerts = spec.alerts
    if not alerts.channels:
        return SensorResult(
            skip_reason=SkipReason(
                "no alert channels in the pipeline spec (alerts.channels; docs/alerts.md)"
            )
        )
    name = scoped_name(spec, ALERTS_SENSOR)
    now = time.time()
    positions: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    ledger = load_ledger(context.instance, name)
    reader = AlertReader(spec, context.instance, registry_links(context, spec), job_names)
    lookback = alerts.lookback_hours * SECONDS_PER_HOUR
    found, positions = reader.read(positions, since=now - lookback)
    channels = build_channels(alerts)
    policy = policy_of(spec)
    new = route(ledger, channels, found, policy.max_pending)
    reports = deliver(ledger, channels, spec.name, policy)
    prune(ledger, before=now - lookback - 24 * SECONDS_PER_HOUR, channels=channels)
    save_ledger(context.instance, name, ledger)
    secrets = [s for c in channels for s in c.secrets]
    for report in reports:
        if report.error and not report.waiting:
            context.log.warning(redact(report.text(), secrets))
        elif report.sent:
            context.log.info(report.text())
    kinds = ", ".join(sorted({a.kind for a in new}))
    done = [r.text() for r in reports if r.sent or r.pending]
    summary = "; ".join([f"{len(new)} new alert(s)" + (f" ({kinds})" if kinds else ""), *done])
    return SensorResult(
        cursor=json.dumps(positions, sort_keys=True),
        skip_reason=SkipReason(redact(summary, secrets)[:2000]),
    )


def build_alerts_sensor(spec: PipelineSpec, jobs: list[Any]) -> Any:
    """The pipeline's alerts sensor; `jobs`: every job of the pipeline (their failures are
    alerts)."""
    alerts = spec.alerts
    job_names = sorted(job.name for job in jobs)
    where = ", ".join(f"{c.name} ({c.type})" for c in alerts.channels) or "none configured"

    @sensor(
        name=scoped_name(spec, ALERTS_SENSOR),
        minimum_interval_seconds=alerts.interval_seconds,
        default_status=DefaultSensorStatus.STOPPED,
        required_resource_keys={"mlflow"},
        description="Sends the pipeline's alerts (data blocked by the GX gate, drift, "
        "performance degraded, retraining started, gate verdicts, rollbacks, failed runs) to "
        f"the channels of the spec's `alerts` section: {where}. Each event once; a tick's "
        "alerts in one message per channel; a channel that is down is retried with backoff "
        "and its alerts kept (docs/alerts.md).",
    )
    def alerts_sensor(context: SensorEvaluationContext) -> SensorResult:
        return alerts_tick(context, spec, job_names)

    return alerts_sensor
