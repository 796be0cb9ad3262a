"""Profiles pick the backends from the environment; secrets stay EnvVars (no servers needed:
tests/integration runs the production profile against real ones)."""

import pytest
from dagster import EnvVar

from mlops_assets.pipeline import default_resources
from mlops_resources.io_manager import AssetIOManager
from mlops_resources.profiles import PRODUCTION_ENV, ProfileError, profile_resources
from mlops_resources.storage import ReportStoreResource

PRODUCTION = {
    "MLOPS_PROFILE": "production",
    "MLOPS_S3_BUCKET": "team-bucket",
    "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
    "MLOPS_REDIS_HOST": "redis.internal",
    "MLOPS_REDIS_PASSWORD": "redis-secret-value",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
}


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PRODUCTION_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)


def test_local_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_PROFILE", raising=False)
    resources = default_resources()
    assert isinstance(resources["io_manager"], AssetIOManager)
    assert resources["io_manager"].base_path == ""  # $MLOPS_HOME/storage
    assert resources["mlflow"].tracking_uri == "" and resources["feast"].online_store == {}
    assert resources["reports"].base_uri == ""
    assert set(resources) >= {"io_manager", "mlflow", "feast", "gx", "torch_executor", "reports"}


def test_unknown_profile_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_PROFILE", "staging")
    with pytest.raises(ProfileError, match=r"MLOPS_PROFILE='staging': unknown profile"):
        default_resources()


def test_production_names_the_missing_variable(
    production_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ProfileError, match="needs MLFLOW_TRACKING_URI"):
        profile_resources()


def test_production_backends_and_secrets_as_env_vars(production_env: None) -> None:
    resources = profile_resources()
    assert set(resources) == set(profile_resources("local"))
    io_manager = resources["io_manager"]
    assert isinstance(io_manager, AssetIOManager)  # the same class as local, on S3
    assert io_manager.base_path == "s3://team-bucket/dagster"  # credentials: the AWS chain
    mlflow = resources["mlflow"]
    assert mlflow.tracking_uri == mlflow.ui_url == "http://mlflow.internal:5000"
    assert mlflow.resolved_artifact_location is None  # the server decides (S3)
    feast = resources["feast"]
    assert feast.online_store == {"type": "redis", "connection_string": "redis.internal:6379"}
    assert feast.online_store_password == EnvVar("MLOPS_REDIS_PASSWORD")
    assert resources["reports"].base_uri == "s3://team-bucket/reports"
    config_text = repr({name: r for name, r in resources.items()})
    for secret in ("redis-secret-value", "aws-secret-value"):
        assert secret not in config_text


def test_redis_password_is_merged_into_the_connection_string() -> None:
    from mlops_resources.feast_store import FeastResource

    feast = FeastResource(
        online_store={"type": "redis", "connection_string": "127.0.0.1:6379"},
        online_store_password="pw",
    )
    assert feast.online_store_config()["connection_string"] == "127.0.0.1:6379,password=pw"


@pytest.mark.parametrize("key", ["../escape.html", "/etc/passwd", "a/../../b.html", ""])
def test_s3_report_keys_cannot_escape_the_prefix(key: str) -> None:
    with pytest.raises(ValueError, match="escapes the report root"):
        ReportStoreResource(base_uri="s3://bucket/reports").save(key, "<html></html>")
