"""candidate_model with the Torch executor: same asset, pytorch flavor, safe reload, gated,
reproducible from its recorded inputs."""

import json
from pathlib import Path

import yaml
from dagster import materialize

from mlops_assets.keys import asset_key
from mlops_assets.pipeline import build_assets, default_resources
from mlops_assets.spec import load_spec
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource
from mlops_resources.model_loading import load_registered_model
from mlops_resources.torch_executor import TorchExecutorResource
from tests.conftest import run_cli, write_spec


def test_torch_mlp_candidate_is_logged_loaded_and_gated(lifecycle, tmp_path, monkeypatch):
    # Another session fixture (a trained state) may have pointed the environment elsewhere.
    monkeypatch.setenv("MLOPS_HOME", str(lifecycle["home"]))
    monkeypatch.setenv("DAGSTER_HOME", str(lifecycle["home"] / "dagster"))
    base = yaml.safe_load(lifecycle["spec_path"].read_text())
    spec = load_spec(
        write_spec(
            tmp_path / "torch.yaml", model={**base["model"], "kind": "torch_mlp", "params": {}}
        )
    )
    mlflow = MLflowResource()
    champion = mlflow.champion(spec.model_name)
    day = lifecycle["summary"]["runs"][-1]["partition"]
    resources = {**default_resources(), "torch_executor": TorchExecutorResource(max_epochs=4)}
    try:
        result = materialize(
            build_assets(spec),
            selection=[asset_key(spec, "candidate_model"), asset_key(spec, "model_promotion")],
            partition_key=day,
            resources=resources,
        )
        candidate = result.asset_value(asset_key(spec, "candidate_model"))
        verdict = result.asset_value(asset_key(spec, "model_promotion"))
    finally:
        mlflow.client().set_registered_model_alias(spec.model_name, CHAMPION_ALIAS, champion)

    assert candidate["kind"] == "torch_mlp" and 0.5 < candidate["metrics"]["roc_auc"] <= 1
    info = mlflow.client().get_model_version(spec.model_name, candidate["version"])
    assert info.tags["mlops.model_kind"] == "torch_mlp"
    run = mlflow.client().get_run(candidate["run_id"])
    assert run.data.params["device"] == "cpu"
    history = mlflow.client().get_metric_history(candidate["run_id"], "holdout_loss")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) >= 1
    model = load_registered_model(spec.model_name, candidate["version"])
    assert model.predict_proba(lifecycle_rows(lifecycle, spec)).shape[1] == 2
    assert verdict["baseline_version"] == champion
    assert "compared with champion" in verdict["message"]

    # `reproduce` retrains it with the recorded executor settings (max_epochs=4, not the
    # default 30) from an empty checkpoint folder, and gets the same holdout metrics.
    code, out = run_cli(
        "reproduce", "--version", candidate["version"], "--json", "--config", str(spec.spec_path)
    )
    reproduced = json.loads(out)
    assert code == 0 and reproduced["match"], out
    assert {m["metric"] for m in reproduced["metrics"]} >= {"roc_auc", "log_loss"}
    settings = mlflow.client().download_artifacts(
        candidate["run_id"], "governance/torch_executor.json", str(tmp_path)
    )
    assert json.loads(Path(settings).read_text())["max_epochs"] == 4


def lifecycle_rows(lifecycle, spec):
    import pandas as pd

    day = lifecycle["summary"]["runs"][-1]["partition"]
    storage = lifecycle["home"] / "storage" / spec.name / "training_set"
    training = pd.read_parquet(storage / f"{day}.parquet")
    return training[spec.feature_names].head(10)
