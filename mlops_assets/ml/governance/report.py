"""The governance report of a candidate (slices, fairness, calibration), its scalar measures,
and the governance rules the gate adds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlops_assets.ml.dataset import SPLIT_COLUMN
from mlops_assets.ml.evaluation import output_frame, positive_class
from mlops_assets.ml.governance.calibration import calibration_report
from mlops_assets.ml.governance.fairness import (
    FAIRNESS_THRESHOLDS,
    fairness_report,
    fairness_rules,
    favorable_class,
)
from mlops_assets.ml.governance.slices import slice_metrics, slice_rules
from mlops_assets.spec import PipelineSpec, Task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    Frame = pd.DataFrame


def holdout_rows(training_set: Frame) -> Frame:
    """The training set's holdout rows, in order, with a fresh RangeIndex."""
    return training_set[training_set[SPLIT_COLUMN] == "holdout"].reset_index(drop=True)


def governance_report(
    spec: PipelineSpec, training_set: Frame, output: np.ndarray, classes: np.ndarray | None
) -> dict[str, Any]:
    """Slices, fairness and calibration of a model on the training set's holdout, from the
    model's output on the holdout rows (see model_output: scored once by the caller)."""
    holdout = holdout_rows(training_set)
    report: dict[str, Any] = {"slices": slice_metrics(spec, holdout, output, classes)}
    if classes is None:
        return report
    scored = output_frame(output, classes, spec)
    report["fairness"] = fairness_report(
        spec, holdout, scored["prediction"], favorable_class(spec, classes)
    )
    if spec.task == Task.binary_classification:
        truth = (holdout[spec.label].astype(str) == str(positive_class(spec, classes))).to_numpy()
        report["calibration"] = {
            "method": spec.governance.calibration.method,
            **calibration_report(
                truth.astype(int), scored["score"].to_numpy(), spec.governance.calibration.bins
            ),
        }
    return report


def governance_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's scalar measures (for MLflow metrics and asset metadata)."""
    values = {}
    if report.get("calibration"):
        values["calibration_ece"] = report["calibration"]["expected_calibration_error"]
    if report.get("fairness"):
        for metric in FAIRNESS_THRESHOLDS:
            values[f"fairness_{metric}"] = report["fairness"][metric]
    return values


def gate_rules(
    spec: PipelineSpec,
    candidate: dict[str, Any],
    champion_output: tuple[np.ndarray, np.ndarray | None] | None,
    training_set: Frame,
) -> list[dict[str, Any]]:
    """Fairness rules for the candidate and, with a champion, the slice-regression rules
    (`champion_output`: the champion's model_output on the training set's holdout rows)."""
    report = candidate.get("governance", {})
    rules = fairness_rules(spec, report.get("fairness"))
    if champion_output is not None and spec.governance.slice_tolerance is not None:
        rules += slice_rules(
            spec,
            report.get("slices", []),
            slice_metrics(spec, holdout_rows(training_set), *champion_output),
        )
    return rules
