"""The champion/challenger gate: value and change thresholds, fail closed, compare-and-set."""

import math

import pytest
import yaml
from dagster import materialize

from mlops_assets.keys import asset_key
from mlops_assets.ml.gate import decide
from mlops_assets.pipeline import build_assets, default_resources
from mlops_assets.spec import METRICS_BY_TASK, GateSpec, load_spec
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource, PromotionConflict
from tests.conftest import write_spec

BINARY = METRICS_BY_TASK["binary_classification"]


def gate(**sections) -> GateSpec:
    return GateSpec.model_validate(sections)


def test_no_thresholds_means_no_promotion():
    verdict = decide(gate(), BINARY, {"roc_auc": 0.99}, None, None)
    assert not verdict.blessed and "fail closed" in verdict.message


def test_first_model_is_judged_on_value_thresholds_only():
    spec = gate(
        value_thresholds={"roc_auc": {"min": 0.7}},
        change_thresholds={"roc_auc": {"min_absolute_change": 0.5}},
    )
    verdict = decide(spec, BINARY, {"roc_auc": 0.75}, None, None)
    assert verdict.blessed and "no champion yet: value thresholds only" in verdict.message
    assert [r["metric"] for r in verdict.rules] == ["roc_auc"]


@pytest.mark.parametrize(
    ("candidate", "champion", "blessed"),
    [
        ({"roc_auc": 0.80, "log_loss": 0.40}, {"roc_auc": 0.81, "log_loss": 0.40}, False),
        ({"roc_auc": 0.81, "log_loss": 0.40}, {"roc_auc": 0.80, "log_loss": 0.40}, True),
        ({"roc_auc": 0.81, "log_loss": 0.45}, {"roc_auc": 0.80, "log_loss": 0.40}, False),
        ({"roc_auc": math.nan, "log_loss": 0.40}, {"roc_auc": 0.80, "log_loss": 0.40}, False),
    ],
)
def test_change_thresholds_are_direction_aware(candidate, champion, blessed):
    spec = gate(
        value_thresholds={"roc_auc": {"min": 0.7}},
        change_thresholds={
            "roc_auc": {"min_absolute_change": 0.0},
            "log_loss": {"min_relative_change": -0.05},
        },
    )
    verdict = decide(spec, BINARY, candidate, champion, "3")
    assert verdict.blessed is blessed
    assert verdict.baseline_version == "3"


def test_compare_and_set_refuses_a_moved_champion(lifecycle):
    mlflow = MLflowResource()
    name = lifecycle["spec"].model_name
    current = mlflow.champion(name)
    with pytest.raises(PromotionConflict):
        mlflow.move_champion(name, "1", expected="999")
    assert mlflow.champion(name) == current


def run_candidate(lifecycle, tmp_path, model_params: dict, gate_section: dict) -> dict:
    base = yaml.safe_load(lifecycle["spec_path"].read_text())
    spec = load_spec(
        write_spec(
            tmp_path / "spec.yaml",
            model={**base["model"], "params": model_params},
            gate=gate_section,
        )
    )
    day = lifecycle["summary"]["runs"][-1]["partition"]
    result = materialize(
        build_assets(spec),
        selection=[asset_key(spec, "candidate_model"), asset_key(spec, "model_promotion")],
        partition_key=day,
        resources=default_resources(),
    )
    return result.asset_value(asset_key(spec, "model_promotion"))


def test_gate_on_real_candidates(lifecycle, tmp_path):
    mlflow = MLflowResource()
    name = lifecycle["spec"].model_name
    champion = mlflow.champion(name)
    weak = {"max_iter": 1, "max_depth": 1, "learning_rate": 0.01}
    strict = {
        "value_thresholds": {"roc_auc": {"min": 0.5}},
        "change_thresholds": {"roc_auc": {"min_absolute_change": 0.0}},
    }
    try:
        worse = run_candidate(lifecycle, tmp_path, weak, strict)
        assert not worse["blessed"] and not worse["champion_moved"]
        assert worse["baseline_version"] == champion
        assert "fails change vs champion" in worse["message"]
        tags = mlflow.client().get_model_version(name, worse["version"]).tags
        assert tags["mlops.blessed"] == "false" and tags["mlops.baseline_version"] == champion
        assert mlflow.champion(name) == champion

        closed = run_candidate(lifecycle, tmp_path, {}, {})
        assert not closed["blessed"] and "fail closed" in closed["message"]
        assert mlflow.champion(name) == champion

        lenient = {
            "value_thresholds": {"roc_auc": {"min": 0.6}},
            "change_thresholds": {"roc_auc": {"min_absolute_change": -0.2}},
        }
        better = run_candidate(lifecycle, tmp_path, {"max_iter": 150}, lenient)
        assert better["blessed"] and better["champion_moved"]
        assert mlflow.champion(name) == better["version"] != champion
    finally:
        mlflow.client().set_registered_model_alias(name, CHAMPION_ALIAS, champion)
