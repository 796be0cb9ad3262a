"""The model card (markdown) of a registered version."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlops_assets.ml.governance.fairness import FAIRNESS_THRESHOLDS
from mlops_assets.spec import METRICS_BY_TASK, PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

    Frame = pd.DataFrame


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
    ]


def render_model_card(
    spec: PipelineSpec, candidate: dict[str, Any], verdict: dict[str, Any] | None = None
) -> str:
    """The model card (markdown) of a registered version: intended use, lineage, metrics overall,
    by slice, fairness and calibration, the gate verdict and the known limitations."""
    report = candidate.get("governance", {})
    found = report.get("lineage", {})
    gov = spec.governance
    lines = [
        f"# Model card: {candidate['name']} v{candidate['version']}",
        "",
        f"- Task: {spec.task.value}, label `{spec.label}`, model kind `{candidate['kind']}`",
        f"- MLflow run: `{candidate['run_id']}`; partition {found.get('partition', '-')}",
        "",
        "## Intended use",
        "",
        gov.intended_use or spec.description or "Not stated in the pipeline spec.",
        "",
        "## Data and code lineage",
        "",
        f"- Training set data version: `{found.get('data_versions', {}).get('training_set')}`",
        f"- Code version (candidate_model): `{found.get('code_version')}`; git commit "
        f"`{found.get('git_commit')}`; spec hash `{found.get('spec_hash')}`; seed "
        f"{found.get('seed')}",
        f"- Dagster run: `{found.get('dagster_run_id')}`",
        "",
        *_table(
            ["features partition", "data version"],
            [[d, v] for d, v in found.get("data_versions", {}).get("features", {}).items()],
        ),
        "",
        "## Holdout metrics",
        "",
        *_table(["metric", "value"], [[k, v] for k, v in candidate["metrics"].items()]),
    ]
    if report.get("slices"):
        names = list(METRICS_BY_TASK[spec.task])
        lines += ["", f"## Metrics by slice (judged from {gov.min_slice_rows} rows)", ""]
        lines += _table(
            ["slice", "value", "rows", *names],
            [
                [s["slice"], s["value"], s["rows"], *(s["metrics"][n] for n in names)]
                for s in report["slices"]
            ],
        )
    fairness = report.get("fairness")
    if fairness:
        lines += [
            "",
            f"## Fairness: `{fairness['attribute']}`, favorable outcome "
            f"`{fairness['favorable_class']}`",
            "",
            *_table(
                ["group", "rows", "selection rate", "true positive rate", "judged"],
                [
                    [
                        g["group"],
                        g["rows"],
                        g["selection_rate"],
                        g["true_positive_rate"],
                        g["judged"],
                    ]
                    for g in fairness["groups"]
                ],
            ),
            "",
            *_table(["measure", "value"], [[m, fairness[m]] for m in FAIRNESS_THRESHOLDS]),
        ]
    calibration = report.get("calibration")
    if calibration:
        lines += [
            "",
            f"## Calibration (step: {calibration['method']})",
            "",
            f"Expected calibration error {_fmt(calibration['expected_calibration_error'])}, "
            f"Brier score {_fmt(calibration['brier'])}. Plots: `calibration_curve.png`, "
            "`metric_by_slice.png` next to this card.",
            "",
            *_table(
                ["bin", "rows", "mean predicted", "fraction positive"],
                [
                    [c["bin"], c["rows"], c["mean_predicted"], c["fraction_positive"]]
                    for c in calibration["curve"]
                ],
            ),
        ]
    lines += ["", "## Gate verdict", ""]
    if verdict is None:
        lines.append("Not gated yet.")
    else:
        lines.append(
            f"{'Blessed' if verdict['blessed'] else 'Not blessed'}: {verdict['message']}. "
            f"Champion before: {verdict['champion_before'] or 'none'}, after: "
            f"{verdict['champion_after'] or 'none'}."
        )
        if verdict.get("rules"):
            lines += [
                "",
                *_table(
                    ["metric", "rule", "candidate", "champion", "passed"],
                    [
                        [r["metric"], r["rule"], r["candidate"], r["champion"], r["passed"]]
                        for r in verdict["rules"]
                    ],
                ),
            ]
        if verdict.get("audit"):
            lines += ["", *(f"- {k}: {v}" for k, v in verdict["audit"].items())]
    limitations = [
        *gov.limitations,
        f"Evaluated on {spec.model.holdout_days} holdout day(s) only; slices with fewer than "
        f"{gov.min_slice_rows} rows are reported but not judged.",
    ]
    lines += ["", "## Known limitations", "", *(f"- {item}" for item in limitations), ""]
    return "\n".join(lines)
