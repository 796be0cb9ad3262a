"""The alert channels of a pipeline spec's `alerts.channels`, ready to send.

Slack goes through dagster-slack's SlackResource and Teams through dagster-msteams'
MSTeamsResource (imported when a message is sent); email and the JSON webhook are in
mlops_resources/notify.py. Secrets are named in the spec as `{env: NAME}` and read as
dagster.EnvVar(NAME) here, at send time: a variable that is not set makes that channel unusable
(its alerts wait in its queue and every tick says why), never the sensor or a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster import EnvVar

from mlops_assets.spec import (
    AlertsSpec,
    EmailChannelSpec,
    SecretEnv,
    SlackChannelSpec,
    TeamsChannelSpec,
    WebhookChannelSpec,
)
from mlops_resources.notify import (
    Alert,
    Channel,
    ChannelError,
    EmailChannel,
    UnusableChannel,
    WebhookChannel,
    alert_markdown,
)

SLACK_MAX_TEXT = 39_000  # chat.postMessage truncates text at 40,000 characters


@dataclass
class SlackChannel(Channel):
    """chat.postMessage through dagster_slack.SlackResource's WebClient (mrkdwn text)."""

    token: str = field(default="", repr=False)
    channel: str = ""
    api_url: str = "https://slack.com/api/"

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        from dagster_slack import SlackResource

        client = SlackResource(token=self.token).get_client()
        client.base_url, client.timeout = self.api_url, int(max(1, timeout))
        blocks = [
            alert_markdown(a, lambda label, url: f"<{url}|{label}>", lambda t: f"*{t}*")
            for a in alerts
        ]
        header = f"*{pipeline}: {len(alerts)} alerts*\n\n" if len(alerts) > 1 else ""
        text = header + "\n\n".join([*blocks, note] if note else blocks)
        response = client.chat_postMessage(channel=self.channel, text=text[:SLACK_MAX_TEXT])
        if not response.get("ok"):
            raise ChannelError(f"Slack answered {response.get('error')}")


@dataclass
class TeamsChannel(Channel):
    """An adaptive card through dagster_msteams.MSTeamsResource's TeamsClient."""

    hook_url: str = field(default="", repr=False)

    def send(self, pipeline: str, alerts: list[Alert], note: str, timeout: float) -> None:
        from dagster_msteams import MSTeamsResource
        from dagster_msteams.adaptive_card import AdaptiveCard

        card = AdaptiveCard()
        if len(alerts) > 1:
            card.add_attachment(f"**{pipeline}: {len(alerts)} alerts**")
        for alert in alerts:
            card.add_attachment(
                alert_markdown(alert, lambda label, url: f"[{label}]({url})", lambda t: f"**{t}**")
            )
        if note:
            card.add_attachment(note)
        client = MSTeamsResource(hook_url=self.hook_url, timeout=timeout).get_client()
        client.post_message(card.payload)


def secret(value: SecretEnv) -> str:
    """The secret's value, read now as a dagster EnvVar; ChannelError when the variable is
    unset or empty (the message names the variable, never a value)."""
    resolved = EnvVar(value.env).get_value()
    if not resolved:
        raise ChannelError(f"environment variable {value.env} is not set")
    return resolved


def build_channel(
    config: SlackChannelSpec | TeamsChannelSpec | EmailChannelSpec | WebhookChannelSpec,
) -> Channel:
    """One channel of the spec, its secrets resolved; UnusableChannel when one is missing."""
    common = {
        "name": config.name,
        "events": frozenset(config.events),
        "min_severity": config.min_severity,
        "timeout": config.timeout_seconds,
    }
    try:
        if isinstance(config, SlackChannelSpec):
            token = secret(config.token)
            return SlackChannel(
                **common,
                secrets=(token,),
                token=token,
                channel=config.channel,
                api_url=config.api_url,
            )
        if isinstance(config, TeamsChannelSpec):
            hook_url = secret(config.hook_url)
            return TeamsChannel(**common, secrets=(hook_url,), hook_url=hook_url)
        if isinstance(config, EmailChannelSpec):
            password = secret(config.password) if config.password else None
            return EmailChannel(
                **common,
                secrets=(password,) if password else (),
                host=config.host,
                port=config.port,
                security=config.security,
                username=config.username,
                password=password,
                sender=config.sender,
                recipients=tuple(config.recipients),
            )
        if isinstance(config, WebhookChannelSpec):
            url = config.url if isinstance(config.url, str) else secret(config.url)
            headers = {k: secret(v) for k, v in config.headers.items()}
            hidden = (*headers.values(), *(() if isinstance(config.url, str) else (url,)))
            return WebhookChannel(**common, secrets=hidden, url=url, headers=headers)
    except ChannelError as exc:
        return UnusableChannel(**common, problem=str(exc))
    raise TypeError(f"unknown alert channel type: {type(config).__name__}")


def build_channels(alerts: AlertsSpec) -> list[Channel]:
    return [build_channel(config) for config in alerts.channels]
