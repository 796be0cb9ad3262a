"""The report's figures (matplotlib, imported when drawn): reliability curve, metric by slice."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_assets.ml.governance.slices import slice_metric_name
from mlops_assets.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

    Frame = pd.DataFrame


def governance_figures(spec: PipelineSpec, report: dict[str, Any]) -> dict[str, Any]:
    """PNG-ready matplotlib figures: the reliability curve and the metric by slice."""
    from matplotlib.figure import Figure

    figures = {}
    calibration = report.get("calibration")
    if calibration and calibration["curve"]:
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
        ax.plot(
            [c["mean_predicted"] for c in calibration["curve"]],
            [c["fraction_positive"] for c in calibration["curve"]],
            marker="o",
            label=f"model (ECE {calibration['expected_calibration_error']:.3f})",
        )
        ax.set(xlabel="mean predicted probability", ylabel="fraction of positives")
        ax.set_title("Reliability curve (holdout)")
        ax.legend(loc="upper left")
        figures["calibration_curve.png"] = fig
    metric = slice_metric_name(spec)
    slices = [s for s in report["slices"] if not math.isnan(s["metrics"][metric])]
    if slices:
        fig = Figure(figsize=(7, 0.35 * len(slices) + 1.5))
        ax = fig.add_subplot()
        labels = [f"{s['slice']}={s['value']} (n={s['rows']})" for s in slices]
        ax.barh(labels, [s["metrics"][metric] for s in slices])
        ax.invert_yaxis()
        ax.set(xlabel=metric)
        ax.set_title(f"{metric} by slice (holdout)")
        fig.tight_layout()
        figures["metric_by_slice.png"] = fig
    return figures
