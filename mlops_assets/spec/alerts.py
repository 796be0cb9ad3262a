"""The alerts section of the spec (docs/alerts.md): the events the alerts sensor sends, and
where."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from mlops_assets.spec.base import StrictModel, repeated

AlertEvent = Literal[
    "data_blocked",
    "drift",
    "performance_degraded",
    "retraining",
    "gate_verdict",
    "rollback",
    "run_failed",
]
ALERT_EVENTS: tuple[str, ...] = get_args(AlertEvent)
AlertSeverity = Literal["info", "warning", "error"]


class SecretEnv(StrictModel):
    """A secret, read from this environment variable (a dagster EnvVar) when a message is sent:
    the spec, the UI, logs and metadata only ever hold the variable's name."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class AlertChannelBase(StrictModel):
    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Unique among the pipeline's channels; names it in the sensor's tick log.",
    )
    events: list[AlertEvent] = Field(
        default_factory=lambda: list(ALERT_EVENTS),
        min_length=1,
        description="The events sent to this channel (default: all).",
    )
    min_severity: AlertSeverity = Field(
        default="info", description="Severity floor: info < warning < error."
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)


class SlackChannelSpec(AlertChannelBase):
    """Slack through dagster-slack (SlackResource, chat.postMessage with a bot token)."""

    type: Literal["slack"]
    token: SecretEnv
    channel: str = Field(min_length=1, description="e.g. #ml-alerts")
    api_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base (a proxy, a test)."
    )


class TeamsChannelSpec(AlertChannelBase):
    """Microsoft Teams through dagster-msteams (an incoming webhook or a Workflows URL)."""

    type: Literal["msteams"]
    hook_url: SecretEnv


class EmailChannelSpec(AlertChannelBase):
    """Email over SMTP."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretEnv | None = None
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _password_has_user(self) -> EmailChannelSpec:
        if self.password is not None and not self.username:
            raise ValueError(f"alert channel '{self.name}': a password needs a username")
        return self


class WebhookChannelSpec(AlertChannelBase):
    """A generic JSON webhook: one POST per digest (docs/alerts.md shows the document)."""

    type: Literal["webhook"]
    url: str | SecretEnv = Field(description="The URL, or {env: NAME} when it holds a token.")
    headers: dict[str, SecretEnv] = Field(
        default_factory=dict, description="Headers sent with every POST, e.g. Authorization."
    )


AlertChannelSpec = Annotated[
    SlackChannelSpec | TeamsChannelSpec | EmailChannelSpec | WebhookChannelSpec,
    Field(discriminator="type"),
]


class AlertsSpec(StrictModel):
    """Where the pipeline's alerts go (none: the alerts sensor has nothing to do)."""

    channels: list[AlertChannelSpec] = Field(default_factory=list)
    dagster_ui_url: str = Field(
        default="",
        description="Base URL of the Dagster UI for links; empty: $MLOPS_DAGSTER_UI_URL, else "
        "http://127.0.0.1:3000.",
    )
    interval_seconds: int = Field(default=30, ge=5, description="Time between sensor ticks.")
    lookback_hours: float = Field(
        default=24,
        gt=0,
        description="Started without a cursor (first start, cursor reset), the sensor reads "
        "events this far back; alerts it already sent are not sent again.",
    )
    attempts: int = Field(default=3, ge=1, le=10, description="Tries per channel per tick.")
    backoff_seconds: float = Field(
        default=1.0, gt=0, le=30, description="Wait before the second try of a tick, doubling."
    )
    max_backoff_seconds: float = Field(
        default=900,
        gt=0,
        description="A channel that failed a tick waits interval_seconds, doubling per failed "
        "tick up to this, before it is tried again.",
    )
    max_pending: int = Field(
        default=100,
        ge=1,
        description="Alerts kept per channel while it cannot be reached; beyond, the oldest are "
        "dropped (and the next message says how many).",
    )
    tick_budget_seconds: float = Field(
        default=30,
        gt=0,
        le=50,
        description="Time one tick may spend sending (the daemon allows a sensor 60 s); "
        "channels not reached wait for the next tick.",
    )

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[Any]) -> list[Any]:
        duplicated = repeated([c.name for c in channels])
        if duplicated:
            raise ValueError(f"duplicated alert channel names: {duplicated}")
        return channels
