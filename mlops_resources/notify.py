"""Alert delivery, without Dagster: alerts, their messages, channels, digests, retry, backoff.

An `Alert` is one thing worth telling people (a day blocked by the data gate, drift, ...), with
a stable id, a severity, a title, detail lines and links. The alerts sensor
(mlops_assets/alerts.py) finds them in the Dagster instance; this module gets them out:

- `route` puts each alert not seen before into the queue of every channel that wants it
  (its events and severity floor) and remembers its id, so an alert read twice is queued once;
- `deliver` sends each channel's whole queue as one message (a digest when there are several),
  retrying a few times with exponential backoff inside a time budget. A channel that still
  fails keeps its queue (bounded: the oldest are dropped and counted) and is not tried again
  until its backoff has passed (doubling per failed tick, capped). Errors are recorded with
  every secret of every channel replaced by `***`.

The state of both (seen ids, queues, failures) is a plain JSON-able dict (`Ledger`) that the
caller stores. Webhook and email channels are here; Slack and Teams, which go through
dagster-slack and dagster-msteams, are built in mlops_assets/alert_channels.py.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote, urlsplit

SEVERITIES = ("info", "warning", "error")
MAX_DETAILED = 20  # a digest of more alerts lists the rest by title only
MAX_ERROR_CHARS = 500


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Alert:
    """One event worth a message. `id` is stable: the same event read again has the same id."""

    id: str
    kind: str
    severity: str
    pipeline: str
    title: str
    details: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (label, url)
    occurred_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["details"] = list(self.details)
        data["links"] = [{"label": label, "url": url} for label, url in self.links]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(
            **{
                **data,
                "details": tuple(data.get("details", ())),
                "links": tuple((link["label"], link["url"]) for link in data.get("links", ())),
            }
        )


def secret_forms(secret: str) -> set[str]:
    """How a secret may appear in an error: as written, URL-quoted, and for a URL (a webhook
    whose path is its key) its path and query, which HTTP clients name in their errors."""
    forms = {secret, quote(secret, safe=""), quote(secret)}
    parts = urlsplit(secret)
    if parts.scheme and parts.netloc:
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        forms |= {f for f in (tail, parts.path, parts.query, parts.password or "") if len(f) > 1}
    return forms


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced by `***`."""
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


# Loggers of the HTTP clients the channels use: at DEBUG they print request URLs (a Teams or
# webhook URL is a secret) and bodies.
CLIENT_LOGGERS = ("urllib3.connectionpool", "slack_sdk.web.base_client")


class SecretMask(logging.Filter):
    """Masks the registered secrets in every record of the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), ()
        return True


_MASK = SecretMask()


def mask_in_client_logs(secrets: Iterable[str]) -> None:
    """Mask `secrets` in the HTTP clients' own log records, from now on in this process."""
    _MASK.secrets.update(s for s in secrets if s)
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if _MASK not in logger.filters:
            logger.addFilter(_MASK)


# Messages -------------------------------------------------------------------------------------


def alert_text(alert: Alert, detailed: bool = True) -> str:
    lines = [f"[{alert.severity.upper()}] {alert.title}"]
    if detailed:
        lines += [f"  {line}" for line in alert.details]
        lines += [f"  {label}: {url}" for label, url in alert.links]
    return "\n".join(lines)


def digest_subject(pipeline: str, alerts: list[Alert]) -> str:
    worst = max(alerts, key=lambda a: severity_rank(a.severity)).severity
    if len(alerts) == 1:
        return f"[mlops {worst}] {alerts[0].title}"  # titles start with the pipeline's name
    return f"[mlops {worst}] {pipeline}: {len(alerts)} alerts"


def digest_text(pipeline: str, alerts: list[Alert], note: str = "") -> str:
    """One message for all of `alerts` (oldest first): a header when there are several."""
    parts = []
    if len(alerts) > 1:
        counts = ", ".join(
            f"{sum(a.severity == s for a in alerts)} {s}"
            for s in reversed(SEVERITIES)
            if any(a.severity == s for a in alerts)
        )
        parts.append(f"{pipeline}: {len(alerts)} alerts ({counts})")
    parts += [alert_text(a, detailed=i < MAX_DETAILED) for i, a in enumerate(alerts)]
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def alert_markdown(
    alert: Alert, link: Callable[[str, str], str], bold: Callable[[str], str]
) -> str:
    """The alert in a chat's markup: `link(label, url)` and `bold(text)` write it."""
    lines = [bold(f"[{alert.severity.upper()}] {alert.title}"), *alert.details]
    if alert.links:
        lines.append(" | ".join(link(label, url) for label, url in alert.links))
    return "\n".join(lines)


# Channels -------------------------------------------------------------------------------------


class ChannelError(RuntimeError):
    """A channel that cannot take a message (refused, timed out, misconfigured)."""


@dataclass
class Channel:
    """Where alerts go. `events` and `min_severity` choose which; `secrets` are the resolved
    secret values of this channel (never logged: errors are redacted with them)."""

    name: str
    events: frozenset[str]
    min_severity: str = "info"
    timeout: float = 10.0
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def wants(self, alert: Alert) -> bool:
        return alert.kind in self.events and severity_rank(alert.severity) >= severity_rank(
            self.min_severity
        )

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        raise NotImplementedError


@dataclass
class UnusableChannel(Channel):
    """A channel whose configuration is incomplete (e.g. its secret's variable is unset): its
    alerts wait in its queue, and every attempt reports why."""

    problem: str = ""

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        raise ChannelError(self.problem)


@dataclass
class WebhookChannel(Channel):
    """POST one JSON document per digest: {pipeline, count, text, alerts: [...]}."""

    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        payload = {
            "pipeline": pipeline,
            "count": len(alerts),
            "text": digest_text(pipeline, alerts, note),
            "note": note,
            "alerts": [a.to_dict() for a in alerts],
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **self.headers},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            if not 200 <= response.status < 300:
                raise ChannelError(f"webhook answered HTTP {response.status}")


@dataclass
class EmailChannel(Channel):
    """One plain-text email per digest over SMTP (STARTTLS, implicit TLS, or none)."""

    host: str = ""
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = ""
    recipients: tuple[str, ...] = ()

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        message = EmailMessage()
        message["Subject"] = digest_subject(pipeline, alerts)
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(digest_text(pipeline, alerts, note))
        context = ssl.create_default_context()
        smtp_class = smtplib.SMTP_SSL if self.security == "ssl" else smtplib.SMTP
        kwargs = {"context": context} if self.security == "ssl" else {}
        with smtp_class(self.host, self.port, timeout=timeout, **kwargs) as smtp:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


# Routing and delivery -------------------------------------------------------------------------

Ledger = dict[str, Any]  # {"seen": {alert id: occurred_at}, "channels": {name: state}}


@dataclass(frozen=True)
class Policy:
    """How hard to try: `attempts` per tick with waits of backoff_seconds, doubling; after a
    failed tick, the channel waits retry_base_seconds, doubling per failed tick up to
    max_backoff_seconds; at most `max_pending` alerts wait per channel; a tick spends at most
    budget_seconds sending."""

    attempts: int = 3
    backoff_seconds: float = 1.0
    retry_base_seconds: float = 30.0
    max_backoff_seconds: float = 900.0
    max_pending: int = 100
    budget_seconds: float = 30.0


@dataclass
class Report:
    """What happened to one channel in one delivery."""

    channel: str
    sent: int = 0
    pending: int = 0
    dropped: int = 0
    error: str = ""
    waiting: str = ""  # why the channel was not tried (backoff, time budget)

    def text(self) -> str:
        dropped = f"; {self.dropped} dropped" if self.dropped else ""
        if self.waiting:
            last = f"; last error: {self.error}" if self.error else ""
            return (
                f"{self.channel}: {self.pending} alert(s) waiting ({self.waiting}{last}){dropped}"
            )
        if self.error:
            return (
                f"{self.channel}: NOT SENT, {self.pending} alert(s) kept for retry "
                f"({self.error}){dropped}"
            )
        return f"{self.channel}: sent {self.sent}"


def channel_state(ledger: Ledger, name: str) -> dict[str, Any]:
    return ledger.setdefault("channels", {}).setdefault(
        name, {"pending": [], "failures": 0, "retry_at": 0.0, "error": "", "dropped": 0}
    )


def route(
    ledger: Ledger, channels: list[Channel], alerts: list[Alert], max_pending: int
) -> list[Alert]:
    """Queue each alert not seen before for every channel that wants it (any secret in its
    text masked before it is stored); the new alerts."""
    seen = ledger.setdefault("seen", {})
    new = [a for a in dict.fromkeys(alerts) if a.id not in seen]
    secrets = [s for c in channels for s in c.secrets]
    for alert in redact_alerts(new, secrets):
        seen[alert.id] = alert.occurred_at
        for channel in channels:
            if channel.wants(alert):
                state = channel_state(ledger, channel.name)
                state["pending"].append(alert.to_dict())
                excess = len(state["pending"]) - max_pending
                if excess > 0:  # bounded: the oldest go, and the next message says so
                    del state["pending"][:excess]
                    state["dropped"] += excess
    return new


def deliver(
    ledger: Ledger,
    channels: list[Channel],
    pipeline: str,
    policy: Policy,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Report]:
    """Send every channel's queue as one message; never raises for a channel's failure."""
    secrets = [s for c in channels for s in c.secrets]
    mask_in_client_logs(secrets)
    deadline = clock() + policy.budget_seconds
    reports = []
    for channel in channels:
        state = channel_state(ledger, channel.name)
        report = Report(channel.name, pending=len(state["pending"]), dropped=state["dropped"])
        reports.append(report)
        if not state["pending"]:
            continue
        if clock() < state["retry_at"]:
            report.waiting = f"after {state['failures']} failed tick(s), backing off until " + (
                time.strftime("%H:%M:%S", time.localtime(state["retry_at"]))
            )
            report.error = state["error"]
            continue
        alerts = [Alert.from_dict(a) for a in state["pending"]]
        note = (
            f"{state['dropped']} older alert(s) were dropped while {channel.name} could not be "
            "reached."
            if state["dropped"]
            else ""
        )
        alerts = redact_alerts(alerts, secrets)
        error = send_with_retries(channel, pipeline, alerts, note, policy, deadline, clock, sleep)
        if error is None:
            report.sent, report.pending, report.dropped = len(alerts), 0, 0
            state.update(pending=[], failures=0, retry_at=0.0, error="", dropped=0)
            continue
        if error == "":
            report.waiting = "out of this tick's time budget"
            continue
        state["failures"] += 1
        wait = policy.retry_base_seconds * 2 ** (state["failures"] - 1)
        state["retry_at"] = clock() + min(wait, policy.max_backoff_seconds)
        state["error"] = report.error = redact(error, secrets)[:MAX_ERROR_CHARS]
    return reports


def send_with_retries(
    channel: Channel,
    pipeline: str,
    alerts: list[Alert],
    note: str,
    policy: Policy,
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> str | None:
    """None when sent; else the last error ("" when the time budget ran out before a try)."""
    error = ""
    for attempt in range(policy.attempts):
        remaining = deadline - clock()
        if remaining <= 0:
            return error
        try:
            channel.send(pipeline, alerts, note, min(channel.timeout, remaining))
            return None
        except Exception as exc:  # any channel failure: kept for retry, never raised
            error = f"{type(exc).__name__}: {exc}"
        wait = policy.backoff_seconds * 2**attempt
        if attempt + 1 < policy.attempts and clock() + wait < deadline:
            sleep(wait)
    return error or "failed"


def redact_alerts(alerts: list[Alert], secrets: Iterable[str]) -> list[Alert]:
    """The alerts with any secret value that found its way into their text replaced."""
    secrets = list(secrets)
    if not secrets:
        return alerts
    return [Alert.from_dict(json.loads(redact(json.dumps(a.to_dict()), secrets))) for a in alerts]


def prune(ledger: Ledger, before: float, channels: list[Channel], keep: int = 5000) -> None:
    """Forget the ids of alerts older than `before` (no read goes back that far), keeping at
    most `keep`, and the queues of channels no longer configured."""
    seen = ledger.get("seen", {})
    recent = sorted(((t, i) for i, t in seen.items() if t >= before), reverse=True)[:keep]
    ledger["seen"] = {i: t for t, i in recent}
    names = {c.name for c in channels}
    ledger["channels"] = {k: v for k, v in ledger.get("channels", {}).items() if k in names}
