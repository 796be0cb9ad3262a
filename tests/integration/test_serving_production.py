"""The online endpoint on the production profile: `python -m mlops_assets serve` reads the
champion through the MLflow tracking server (artifacts in S3) and the features from the Redis
online store that the production lifecycle materialized; no secret reaches its log."""

import os

import pandas as pd
import pytest

from tests.integration.conftest import SECRET_VARS
from tests.serving_support import ServingState, direct_scores, predict, running_server, served


@pytest.fixture(scope="module")
def state(production: dict) -> ServingState:
    assert production["exit_code"] == 0, production["stderr"][-3000:]

    class ProductionState:  # what running_server and direct_scores need of a TrainedState
        spec = production["spec"]
        env = production["env"]

        @staticmethod
        def write_spec(path, **overrides):
            import yaml

            raw = yaml.safe_load(production["spec_path"].read_text())
            raw.update(overrides)
            path.write_text(yaml.safe_dump(raw))
            return path

    offline = production["home"] / "feast" / "offline" / production["spec"].name
    rows = pd.concat(pd.read_parquet(p) for p in sorted(offline.glob("*.parquet")))
    spec = production["spec"]
    latest = rows.sort_values(spec.timestamp).groupby(spec.entity_key).tail(1)
    labels = dict(zip(latest[spec.entity_key], latest[spec.label].astype(str), strict=True))
    return ServingState(ProductionState(), labels)  # type: ignore[arg-type]


def test_serves_the_champion_from_the_mlflow_server_with_redis_features(
    state: ServingState, tmp_path
):
    from mlops_resources.mlflow_tracking import MLflowResource
    from mlops_resources.profiles import profile_resources

    mlflow: MLflowResource = profile_resources()["mlflow"].process_config_and_initialize()
    champion = mlflow.champion(state.name)
    assert champion is not None
    keys = sorted(state.labels)[:30]
    with running_server(state, tmp_path) as server, server.client() as client:
        assert served(client, state.spec.name)["champion"] == champion
        response = predict(
            client, *({state.spec.entity_key: k} for k in keys), pipeline=state.spec.name
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == champion
        assert not any(row["features_missing"] for row in body["predictions"])
        expected = direct_scores(state, champion, [{state.spec.entity_key: k} for k in keys])
        assert [r["score"] for r in body["predictions"]] == pytest.approx(expected, abs=1e-12)
        log = server.log.read_text()
    for name in SECRET_VARS:
        value = os.environ.get(name)
        if value:
            assert value not in log, name
