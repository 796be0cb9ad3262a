"""Governance measures on small, hand-checkable data: calibration (against scikit-learn),
fairness, slice regression rules, the gate's governance rules, audit triggers and spec errors."""

import math

import numpy as np
import pandas as pd
import pytest

from mlops_assets.governance import triggered_by
from mlops_assets.ml.gate import decide
from mlops_assets.ml.governance.calibration import calibration_report
from mlops_assets.ml.governance.fairness import fairness_report, fairness_rules
from mlops_assets.ml.governance.reproduce import ReproduceError, retrain
from mlops_assets.ml.governance.slices import slice_rules
from mlops_assets.spec import METRICS_BY_TASK, GateSpec, SpecError, load_spec
from tests.conftest import write_spec

BINARY = METRICS_BY_TASK["binary_classification"]


def governed_spec(tmp_path, **governance):
    return load_spec(write_spec(tmp_path / "spec.yaml", governance=governance))


def test_calibration_matches_scikit_learn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    score = rng.random(500)
    truth = (rng.random(500) < score**2).astype(int)  # over-confident scores
    report = calibration_report(truth, score, bins=10)
    observed, predicted = calibration_curve(truth, score, n_bins=10, strategy="uniform")
    assert [c["fraction_positive"] for c in report["curve"]] == pytest.approx(observed)
    assert [c["mean_predicted"] for c in report["curve"]] == pytest.approx(predicted)
    assert report["brier"] == pytest.approx(brier_score_loss(truth, score))
    weights = np.array([c["rows"] for c in report["curve"]]) / len(score)
    assert report["expected_calibration_error"] == pytest.approx(
        float(np.sum(weights * np.abs(observed - predicted)))
    )
    assert report["expected_calibration_error"] > 0.1
    perfect = calibration_report(np.array([0, 0, 1, 1]), np.array([0.0, 0.0, 1.0, 1.0]), 10)
    assert perfect["expected_calibration_error"] == 0 and perfect["brier"] == 0


def fairness_frame():
    """Group 'a': 100 rows, 80 approved; group 'b': 100 rows, 60 approved; group 'c': 10 rows.
    Truly favorable rows: 50 in each of a and b, of which a approves 45 and b 30."""
    rows = []
    for group, n, approved, qualified, approved_qualified in [
        ("a", 100, 80, 50, 45),
        ("b", 100, 60, 50, 30),
        ("c", 10, 0, 5, 0),
    ]:
        for i in range(n):
            is_qualified = i < qualified
            is_approved = (
                i < approved_qualified
                if is_qualified
                else i - qualified < approved - approved_qualified
            )
            rows.append(
                {
                    "region": group,
                    "defaulted": "0" if is_qualified else "1",
                    "prediction": "0" if is_approved else "1",
                }
            )
    return pd.DataFrame(rows)


def test_fairness_measures_and_rules(tmp_path):
    spec = governed_spec(
        tmp_path,
        fairness={
            "sensitive_attribute": {"column": "region"},
            "favorable_class": "0",
            "min_group_rows": 50,
            "max_demographic_parity_difference": 0.25,
            "max_equal_opportunity_difference": 0.2,
            "min_disparate_impact_ratio": 0.8,
        },
    )
    frame = fairness_frame()
    report = fairness_report(spec, frame, frame["prediction"], "0")
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["a"]["selection_rate"] == pytest.approx(0.8)
    assert groups["b"]["true_positive_rate"] == pytest.approx(0.6)
    assert not groups["c"]["judged"]  # 10 rows < min_group_rows: reported, not judged
    assert report["demographic_parity_difference"] == pytest.approx(0.2)
    assert report["equal_opportunity_difference"] == pytest.approx(0.3)
    assert report["disparate_impact_ratio"] == pytest.approx(0.75)
    verdicts = {r["metric"]: r["passed"] for r in fairness_rules(spec, report)}
    assert verdicts == {
        "demographic_parity_difference[region]": True,
        "equal_opportunity_difference[region]": False,
        "disparate_impact_ratio[region]": False,
    }
    only_a = frame[frame["region"] == "a"]
    single = fairness_report(spec, only_a, only_a["prediction"], "0")
    assert math.isnan(single["disparate_impact_ratio"])
    assert not any(r["passed"] for r in fairness_rules(spec, single))  # unmeasurable: blocks


def test_slice_rules_judge_only_large_defined_slices(tmp_path):
    spec = governed_spec(
        tmp_path, slice_tolerance={"metric": "roc_auc", "max_drop": 0.05}, min_slice_rows=50
    )

    def slices(north: float, south: float, tiny: float) -> list[dict]:
        return [
            {"slice": "region", "value": "north", "rows": 200, "metrics": {"roc_auc": north}},
            {"slice": "region", "value": "south", "rows": 200, "metrics": {"roc_auc": south}},
            {"slice": "region", "value": "east", "rows": 10, "metrics": {"roc_auc": tiny}},
        ]

    rules = slice_rules(spec, slices(0.74, math.nan, 0.2), slices(0.80, 0.8, 0.9))
    assert [(r["metric"], r["passed"]) for r in rules] == [("roc_auc[region=north]", False)]
    rules = slice_rules(spec, slices(0.76, 0.7, 0.2), slices(0.80, 0.7, 0.9))
    assert all(r["passed"] for r in rules) and len(rules) == 2


def test_governance_rules_block_but_never_bless_alone():
    gate = GateSpec.model_validate({"value_thresholds": {"roc_auc": {"min": 0.7}}})
    unfair = {
        "metric": "disparate_impact_ratio[age]",
        "rule": ">= 0.8",
        "candidate": 0.5,
        "champion": None,
        "passed": False,
    }
    verdict = decide(gate, BINARY, {"roc_auc": 0.9}, None, None, [unfair])
    assert not verdict.blessed and "disparate_impact_ratio[age] 0.5 fails >= 0.8" in verdict.message
    change_only = GateSpec.model_validate(
        {"change_thresholds": {"roc_auc": {"min_absolute_change": 0.0}}}
    )
    fair = {**unfair, "candidate": 0.9, "passed": True}
    verdict = decide(change_only, BINARY, {"roc_auc": 0.9}, None, None, [fair])
    assert not verdict.blessed and "fail closed" in verdict.message


def test_trigger_of_a_run():
    assert triggered_by({"dagster/sensor_name": "drift_sensor"}) == "sensor:drift_sensor"
    assert triggered_by({"dagster/schedule_name": "nightly"}) == "schedule:nightly"
    assert triggered_by({"user": "ada@example.com"}) == "user:ada@example.com"
    assert triggered_by({"dagster/backfill": "abc", "user": "ada"}) == "backfill:abc by user:ada"
    assert triggered_by({}).startswith("user:")


@pytest.mark.parametrize(
    ("governance", "expected"),
    [
        ({"slices": ["colour"]}, "governance.slices[0].column: 'colour' is not a feature"),
        ({"slices": ["age"]}, "governance.slices[0].bins: numeric feature 'age' needs bins"),
        ({"slices": [{"column": "region", "bins": [0, 1]}]}, "takes no bins"),
        ({"slices": [{"column": "age", "bins": [40, 18]}]}, "at least 2 increasing edges"),
        ({"slice_tolerance": {"metric": "auc", "max_drop": 0.1}}, "unknown metric 'auc'"),
        ({"slice_tolerance": {"metric": "roc_auc", "max_drop": -1}}, "max_drop"),
        (
            {"fairness": {"sensitive_attribute": {"column": "region"}, "favorable_class": "2"}},
            "governance.fairness.favorable_class: '2' is not one of",
        ),
        (
            {"fairness": {"sensitive_attribute": "region", "min_disparate_impact_ratio": 1.5}},
            "less than or equal to 1",
        ),
        ({"calibration": {"method": "platt"}}, "calibration.method"),
        ({"intended_use": "x", "owner": "me"}, "owner: unknown key"),
    ],
)
def test_bad_governance_section_names_the_key(tmp_path, governance, expected):
    path = write_spec(tmp_path / "bad.yaml", governance=governance)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_calibration_step_needs_a_scikit_learn_classifier(tmp_path):
    path = write_spec(
        tmp_path / "bad.yaml",
        model={"kind": "torch_mlp", "training_window_days": 6, "holdout_days": 2},
        governance={"calibration": {"method": "sigmoid"}},
    )
    with pytest.raises(SpecError, match="governance.calibration.method: calibration needs"):
        load_spec(path)


def test_reproducing_a_gpu_trained_torch_version_needs_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: a cuda-trained version can be reproduced here")
    spec = load_spec(
        write_spec(
            tmp_path / "torch.yaml",
            model={"kind": "torch_mlp", "training_window_days": 6, "holdout_days": 2},
        )
    )
    training_set = pd.DataFrame()  # refused before any training
    with pytest.raises(ReproduceError, match="was trained on cuda: reproduce it on a machine"):
        retrain(spec, training_set, {"device": "cuda", "max_epochs": 4})
