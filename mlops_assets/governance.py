"""Governance: lineage (data and code versions), evaluation by slice, group fairness,
calibration, the model card, the audit trail of registry actions, retirement and reproduction.

Everything here is a by-product of training and gating: `candidate_model` calls
`log_governance` and `publish_model_card`, `model_promotion` calls `gate_rules` and
`record_audit`. Heavy libraries (mlflow, sklearn, matplotlib) are imported inside functions.
"""

import contextlib
import getpass
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetRecordsFilter,
    AssetsDefinition,
    Config,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    job,
    op,
)

from mlops_assets.data import content_hash
from mlops_assets.features import SPLIT_COLUMN
from mlops_assets.frames import Frame
from mlops_assets.keys import RETIRE_JOB, RETIRE_OP, asset_key, scoped_name
from mlops_assets.spec import METRICS_BY_TASK, PipelineSpec, SliceSpec, Task
from mlops_resources.mlflow_tracking import MLflowResource

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ARTIFACT_DIR = "governance"
CARD_FILE = "model_card.md"
TRAINING_SET_FILE = "training_set.parquet"
SPEC_FILE = "spec.json"
REPORT_FILE = "report.json"
TORCH_SETTINGS_FILE = "torch_executor.json"
DATA_VERSION_TAG = "mlops.data_version.training_set"
CODE_VERSION_TAG = "mlops.code_version"
RETIRED_TAG = "mlops.retired"
DAY_SLICE = "day"

# The spec keys each stage reads: a change to them (or to the stage's module) gives the asset a
# new code version, so Dagster shows it and everything downstream as stale. Unlisted assets use
# the whole spec.
SPEC_KEYS_BY_ASSET: dict[str, tuple[str, ...]] = {
    "raw_data": ("source", "timestamp", "partitions"),
    "validated_data": (
        "entity_key",
        "timestamp",
        "label",
        "task",
        "classes",
        "features",
        "allow_extra_columns",
        "expectations",
    ),
    "features": ("entity_key", "timestamp", "label", "features", "feature_ttl_days"),
    "training_set": (
        "entity_key",
        "timestamp",
        "label",
        "features",
        "feature_ttl_days",
        "model.training_window_days",
        "model.holdout_days",
    ),
    "candidate_model": ("label", "task", "classes", "features", "model", "governance"),
    "model_promotion": ("task", "classes", "gate", "governance"),
    "batch_predictions": ("entity_key", "timestamp", "features", "task", "classes"),
}

# Past-tense tag prefix of each audited registry action.
AUDIT_ACTIONS = {"promote": "promoted", "rollback": "rolled_back", "retire": "retired"}


class ReproduceError(RuntimeError):
    """A model version whose recorded inputs are missing or do not match their versions."""


class RetirementRefused(RuntimeError):
    """Retiring this version needs `force` (it is the current champion)."""


# --- lineage: code versions and data versions -------------------------------------------------


def spec_subset(spec: PipelineSpec, keys: tuple[str, ...] | None) -> dict[str, Any]:
    """The spec values under `keys` (dotted paths into sections); all of it when None."""
    dumped = spec.model_dump(mode="json")
    if keys is None:
        return dumped
    subset = {}
    for key in keys:
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        subset[key] = value
    return subset


def code_version(spec: PipelineSpec, asset_name: str, module_file: str) -> str:
    """Hash of the stage's module source and of the spec keys the stage reads."""
    digest = hashlib.sha256(Path(module_file).read_bytes())
    keys = SPEC_KEYS_BY_ASSET.get(asset_name)
    digest.update(json.dumps(spec_subset(spec, keys), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def with_code_versions(spec: PipelineSpec, assets: list[AssetsDefinition]) -> list[Any]:
    """Give every asset a code version, so Dagster derives data versions from it and marks a
    model stale when its code, its spec section or an upstream data version changed."""

    def versioned(asset_def: AssetsDefinition) -> AssetsDefinition:
        module = sys.modules[asset_def.op.compute_fn.decorated_fn.__module__]
        return asset_def.map_asset_specs(
            lambda s: s.replace_attributes(
                code_version=code_version(spec, s.key.path[-1], str(module.__file__))
            )
        )

    return [versioned(a) for a in assets]


def git_commit() -> str:
    """The commit of the checked-out code (with `+dirty` for local changes), else `unknown`."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def upstream_data_versions(
    context: Any, spec: PipelineSpec, asset: str, partitions: list[str]
) -> dict[str, str]:
    """Latest recorded DataVersion of the pipeline's `asset` for each partition, from the
    Dagster instance."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key(spec, asset), asset_partitions=partitions),
        limit=len(partitions) * 20,
    ).records
    versions: dict[str, str] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        version = (materialization.tags or {}).get("dagster/data_version")
        if version and materialization.partition not in versions:
            versions[materialization.partition] = version
    return dict(sorted(versions.items()))


def lineage(context: Any, spec: PipelineSpec, training_set: Frame) -> dict[str, Any]:
    """What a model version was built from: data versions, code versions, spec, commit, run."""
    days = sorted({d.isoformat() for d in training_set[spec.timestamp].dt.date})
    return {
        "partition": context.partition_key,
        "dagster_run_id": context.run_id,
        "data_versions": {
            "training_set": content_hash(training_set),
            "features": upstream_data_versions(context, spec, "features", days),
        },
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
        "spec_hash": hashlib.sha256(
            json.dumps(spec_subset(spec, None), sort_keys=True).encode()
        ).hexdigest()[:16],
        "git_commit": git_commit(),
        "seed": spec.model.seed,
    }


# --- evaluation by slice ----------------------------------------------------------------------


def slice_labels(frame: Frame, item: SliceSpec) -> "pd.Series":
    """Group label of each row: the category, or the `[low, high)` bin of a numeric column."""
    import pandas as pd

    values = frame[item.column]
    if item.bins is None:
        return values.astype(str)
    binned = pd.cut(values, bins=item.bins, right=False)
    return binned.astype(str).where(binned.notna(), "out of bins")


def slice_groups(spec: PipelineSpec, holdout: Frame) -> "Iterator[tuple[str, str, pd.Index]]":
    """(slice column, value, row index) for every configured slice and, if on, every day."""
    labelled = [(item.column, slice_labels(holdout, item)) for item in spec.governance.slices]
    if spec.governance.slice_by_day:
        labelled.append((DAY_SLICE, holdout[spec.timestamp].dt.strftime("%Y-%m-%d")))
    for column, labels in labelled:
        for value, index in sorted(holdout.groupby(labels).groups.items()):
            yield column, str(value), index


def slice_metrics(spec: PipelineSpec, model: Any, holdout: Frame) -> list[dict[str, Any]]:
    """The task's metrics on each slice of the holdout (NaN where a metric is undefined); the
    model scores the holdout once. `holdout` has a default RangeIndex."""
    from mlops_assets.training import model_output, output_metrics

    output, classes = model_output(model, holdout[spec.feature_names], spec)
    rows = []
    for column, value, index in slice_groups(spec, holdout):
        rows.append(
            {
                "slice": column,
                "value": value,
                "rows": len(index),
                "metrics": output_metrics(
                    output[index], classes, holdout[spec.label].iloc[index], spec
                ),
            }
        )
    return rows


def slice_rules(
    spec: PipelineSpec, candidate: list[dict[str, Any]], champion: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Gate rules: no slice with enough rows may be worse than the champion by more than the
    tolerance. Slices where the metric is undefined (e.g. one class) are not judged."""
    tolerance = spec.governance.slice_tolerance
    if tolerance is None:
        return []
    higher = METRICS_BY_TASK[spec.task][tolerance.metric]
    baseline = {(s["slice"], s["value"]): s["metrics"][tolerance.metric] for s in champion}
    rules = []
    for item in candidate:
        value = item["metrics"][tolerance.metric]
        base = baseline.get((item["slice"], item["value"]), math.nan)
        if item["rows"] < spec.governance.min_slice_rows or math.isnan(value + base):
            continue
        drop = base - value if higher else value - base
        rules.append(
            {
                "metric": f"{tolerance.metric}[{item['slice']}={item['value']}]",
                "rule": f"drop vs champion <= {tolerance.max_drop}",
                "candidate": value,
                "champion": base,
                "passed": drop <= tolerance.max_drop,
            }
        )
    return rules


# --- fairness ---------------------------------------------------------------------------------


def favorable_class(spec: PipelineSpec, classes: "np.ndarray") -> str:
    from mlops_assets.training import positive_class

    fairness = spec.governance.fairness
    chosen = fairness.favorable_class if fairness else None
    return str(chosen if chosen is not None else positive_class(spec, classes))


def fairness_report(
    spec: PipelineSpec, holdout: Frame, predicted: "pd.Series", favorable: str
) -> dict[str, Any] | None:
    """Selection rate and true-positive rate of the favorable outcome per group of the sensitive
    attribute; demographic parity difference, equal opportunity difference and disparate impact
    ratio over the groups with at least `min_group_rows` rows."""
    fairness = spec.governance.fairness
    if fairness is None:
        return None
    groups = slice_labels(holdout, fairness.sensitive_attribute).to_numpy()
    selected = predicted.astype(str).to_numpy() == favorable
    qualified = holdout[spec.label].astype(str).to_numpy() == favorable
    table = []
    for group in sorted(set(groups)):
        rows = groups == group
        table.append(
            {
                "group": group,
                "rows": int(rows.sum()),
                "selection_rate": float(selected[rows].mean()),
                "true_positive_rate": float(selected[rows & qualified].mean())
                if (rows & qualified).any()
                else math.nan,
                "judged": bool(rows.sum() >= fairness.min_group_rows),
            }
        )
    judged = [g for g in table if g["judged"]]
    rates = [g["selection_rate"] for g in judged]
    tprs = [g["true_positive_rate"] for g in judged if not math.isnan(g["true_positive_rate"])]
    nan = math.nan
    return {
        "attribute": fairness.sensitive_attribute.column,
        "favorable_class": favorable,
        "groups": table,
        "demographic_parity_difference": max(rates) - min(rates) if len(rates) > 1 else nan,
        "equal_opportunity_difference": max(tprs) - min(tprs) if len(tprs) > 1 else nan,
        # All groups at a zero selection rate are treated alike: ratio 1.
        "disparate_impact_ratio": (min(rates) / max(rates) if max(rates) > 0 else 1.0)
        if len(rates) > 1
        else nan,
    }


FAIRNESS_THRESHOLDS = {
    "demographic_parity_difference": ("max_demographic_parity_difference", "<="),
    "equal_opportunity_difference": ("max_equal_opportunity_difference", "<="),
    "disparate_impact_ratio": ("min_disparate_impact_ratio", ">="),
}


def fairness_rules(spec: PipelineSpec, report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Gate rules from the configured fairness thresholds; NaN (fewer than 2 judged groups)
    fails, so an unmeasurable model is not promoted."""
    fairness = spec.governance.fairness
    if fairness is None or report is None:
        return []
    rules = []
    for metric, (key, op_) in FAIRNESS_THRESHOLDS.items():
        limit = getattr(fairness, key)
        if limit is None:
            continue
        value = report[metric]
        ok = not math.isnan(value) and (value <= limit if op_ == "<=" else value >= limit)
        rules.append(
            {
                "metric": f"{metric}[{report['attribute']}]",
                "rule": f"{op_} {limit}",
                "candidate": value,
                "champion": None,
                "passed": ok,
            }
        )
    return rules


# --- calibration ------------------------------------------------------------------------------


def calibration_report(truth: "np.ndarray", score: "np.ndarray", bins: int) -> dict[str, Any]:
    """Reliability curve on equal-width bins, expected calibration error and Brier score for
    the positive-class score (`truth` is 0/1)."""
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        rows = index == b
        if not rows.any():
            continue
        predicted, observed = float(score[rows].mean()), float(truth[rows].mean())
        ece += rows.sum() / len(score) * abs(observed - predicted)
        curve.append(
            {
                "bin": f"[{edges[b]:.2f}, {edges[b + 1]:.2f}{']' if b == bins - 1 else ')'}",
                "rows": int(rows.sum()),
                "mean_predicted": predicted,
                "fraction_positive": observed,
            }
        )
    return {
        "expected_calibration_error": float(ece),
        "brier": float(np.mean((score - truth) ** 2)),
        "curve": curve,
    }


# --- the report logged with each candidate ----------------------------------------------------


def governance_report(spec: PipelineSpec, model: Any, training_set: Frame) -> dict[str, Any]:
    """Slices, fairness and calibration of a model on the training set's holdout."""
    import numpy as np

    from mlops_assets.inference import score

    holdout = training_set[training_set[SPLIT_COLUMN] == "holdout"].reset_index(drop=True)
    report: dict[str, Any] = {"slices": slice_metrics(spec, model, holdout)}
    if not spec.is_classification:
        return report
    scored = score(model, holdout[spec.feature_names], spec)
    classes = np.asarray(model.classes_)
    report["fairness"] = fairness_report(
        spec, holdout, scored["prediction"], favorable_class(spec, classes)
    )
    if spec.task == Task.binary_classification:
        from mlops_assets.training import positive_class

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


def log_governance(
    context: Any,
    spec: PipelineSpec,
    model: Any,
    training_set: Frame,
    torch_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the governance report and log it to the active MLflow run with the inputs that
    reproduce the model (spec, training set and, for torch_mlp, the Torch executor's settings)
    and the plots. Returns the report."""
    import mlflow

    report = governance_report(spec, model, training_set)
    report["lineage"] = lineage(context, spec, training_set)
    versions = report["lineage"]["data_versions"]
    mlflow.log_params(
        {
            "data_version_training_set": versions["training_set"],
            "code_version": report["lineage"]["code_version"],
        }
    )
    mlflow.log_metrics({k: v for k, v in governance_metrics(report).items() if not math.isnan(v)})
    mlflow.log_dict(report, f"{ARTIFACT_DIR}/{REPORT_FILE}")
    mlflow.log_dict(spec.model_dump(mode="json"), f"{ARTIFACT_DIR}/{SPEC_FILE}")
    if torch_settings is not None:
        mlflow.log_dict(torch_settings, f"{ARTIFACT_DIR}/{TORCH_SETTINGS_FILE}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TRAINING_SET_FILE
        training_set.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), ARTIFACT_DIR)
    for name, figure in governance_figures(spec, report).items():
        mlflow.log_figure(figure, f"{ARTIFACT_DIR}/{name}")
    return report


def lineage_tags(report: dict[str, Any]) -> dict[str, str]:
    """Model version tags naming what the version was built from."""
    found = report["lineage"]
    return {
        DATA_VERSION_TAG: found["data_versions"]["training_set"],
        CODE_VERSION_TAG: str(found["code_version"]),
        "mlops.spec_hash": found["spec_hash"],
        "mlops.git_commit": found["git_commit"],
    }


# --- plots ------------------------------------------------------------------------------------


def slice_metric_name(spec: PipelineSpec) -> str:
    """The metric shown by slice: the gate's slice metric, else the task's first metric."""
    tolerance = spec.governance.slice_tolerance
    return tolerance.metric if tolerance else next(iter(METRICS_BY_TASK[spec.task]))


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


# --- the model card ---------------------------------------------------------------------------


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


def publish_model_card(
    mlflow: MLflowResource,
    spec: PipelineSpec,
    candidate: dict[str, Any],
    verdict: dict[str, Any] | None = None,
) -> str:
    """Render the card and store it as the run's `governance/model_card.md` (replacing an
    earlier one, e.g. the card written before the gate). Returns the markdown."""
    card = render_model_card(spec, candidate, verdict)
    mlflow.client().log_text(candidate["run_id"], card, f"{ARTIFACT_DIR}/{CARD_FILE}")
    return card


def governance_metadata(report: dict[str, Any], card: str) -> dict[str, Any]:
    """Asset metadata: the card, the scalar measures and the lineage."""
    return {
        "model_card": MetadataValue.md(card),
        "lineage": MetadataValue.json(report["lineage"]),
        **{k: float(v) for k, v in governance_metrics(report).items()},
    }


def gate_rules(
    spec: PipelineSpec,
    candidate: dict[str, Any],
    champion_model: Any | None,
    training_set: Frame,
) -> list[dict[str, Any]]:
    """Fairness rules for the candidate and, with a champion, the slice-regression rules
    (champion scored on the same holdout slices)."""
    report = candidate.get("governance", {})
    rules = fairness_rules(spec, report.get("fairness"))
    if champion_model is not None and spec.governance.slice_tolerance is not None:
        holdout = training_set[training_set[SPLIT_COLUMN] == "holdout"].reset_index(drop=True)
        rules += slice_rules(
            spec, report.get("slices", []), slice_metrics(spec, champion_model, holdout)
        )
    return rules


# --- audit trail ------------------------------------------------------------------------------


def triggered_by(run_tags: Mapping[str, str]) -> str:
    """Who or what started a Dagster run: its sensor, schedule, automation, backfill or user."""
    if run_tags.get("dagster/sensor_name"):
        return f"sensor:{run_tags['dagster/sensor_name']}"
    if run_tags.get("dagster/schedule_name"):
        return f"schedule:{run_tags['dagster/schedule_name']}"
    if run_tags.get("dagster/from_automation_condition") or run_tags.get(
        "dagster/auto_materialize"
    ):
        return "automation:declarative"
    user = run_tags.get("user") or getpass.getuser()
    if run_tags.get("dagster/backfill"):
        return f"backfill:{run_tags['dagster/backfill']} by user:{user}"
    return f"user:{user}"


def audit_tags(context: Any, action: str, reason: str) -> dict[str, str]:
    """MLflow version tags recording who/what did `action` (promote, rollback, retire), when,
    in which Dagster run, and why: `mlops.<promoted|rolled_back|retired>_{by,at,run_id,reason}`.
    `context` is any Dagster op or asset execution context."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {sorted(AUDIT_ACTIONS)}")
    prefix = f"mlops.{AUDIT_ACTIONS[action]}"
    return {
        f"{prefix}_by": triggered_by(context.run.tags),
        f"{prefix}_at": datetime.now(UTC).isoformat(timespec="seconds"),
        f"{prefix}_run_id": context.run_id,
        f"{prefix}_reason": reason[:4000],
    }


def record_audit(
    context: Any, mlflow: MLflowResource, name: str, version: str, action: str, reason: str
) -> dict[str, str]:
    """Record an action on a model version in MLflow (version tags) and in the Dagster instance
    (run tags `mlops/action`, `mlops/model_version`, `mlops/triggered_by`, `mlops/reason`, which
    `instance.get_runs(RunsFilter(tags=...))` finds). Returns the MLflow tags, for metadata."""
    tags = audit_tags(context, action, reason)
    mlflow.tag_version(name, version, tags)
    prefix = f"mlops.{AUDIT_ACTIONS[action]}"
    context.instance.add_run_tags(
        context.run_id,
        {
            "mlops/action": action,
            "mlops/model_version": f"{name}/{version}",
            "mlops/triggered_by": tags[f"{prefix}_by"],
            "mlops/reason": reason[:1000],
        },
    )
    return tags


# --- retirement -------------------------------------------------------------------------------


def retire_version(
    mlflow: MLflowResource, name: str, version: str, force: bool = False
) -> dict[str, Any]:
    """Archive a version: remove its aliases and tag it retired; its artifacts and card stay.
    Refuses the current champion unless `force`."""
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RetirementRefused(f"{name} v{version} does not exist in the registry") from exc
    champion = mlflow.champion(name)
    if champion == str(version) and not force:
        raise RetirementRefused(
            f"{name} v{version} is the current champion: promote or roll back to another version "
            "first, or retire it with force (then no champion serves and batch_predictions "
            "scores nothing until a new one is promoted)"
        )
    for alias in found.aliases:
        client.delete_registered_model_alias(name, alias)
    mlflow.tag_version(name, version, {RETIRED_TAG: "true"})
    return {
        "version": str(version),
        "aliases_removed": list(found.aliases),
        "was_champion": champion == str(version),
    }


class RetireConfig(Config):
    """Which version to retire, why, and whether the champion may be retired."""

    version: str
    reason: str
    force: bool = False


def build_retirement_job(spec: PipelineSpec) -> JobDefinition:
    @op(
        name=scoped_name(spec, RETIRE_OP),
        description=f"Archive a version of {spec.model_name}: remove its aliases, tag it "
        "retired, keep its artifacts and model card; refuses the champion unless forced.",
    )
    def retire_model_version(
        context: OpExecutionContext, config: RetireConfig, mlflow: MLflowResource
    ) -> Output[dict[str, Any]]:
        try:
            result = retire_version(mlflow, spec.model_name, config.version, config.force)
        except RetirementRefused as exc:
            raise Failure(str(exc)) from None
        audit = record_audit(
            context, mlflow, spec.model_name, config.version, "retire", config.reason
        )
        context.log.info(f"retired {spec.model_name} v{config.version}: {config.reason}")
        return Output(
            {**result, "audit": audit},
            metadata={
                **result,
                "aliases_removed": MetadataValue.json(result["aliases_removed"]),
                **audit,
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, config.version)
                ),
            },
        )

    @job(
        name=scoped_name(spec, RETIRE_JOB),
        description=f"Retire a version of {spec.model_name} (run config).",
    )
    def retire_model() -> None:
        retire_model_version()

    return retire_model


# --- reproduction -----------------------------------------------------------------------------


def reproduce_version(
    mlflow: MLflowResource, name: str, version: str, tolerance: float = 1e-9
) -> dict[str, Any]:
    """Retrain a version from its recorded inputs (the logged spec and training set, checked
    against the recorded data version, and for torch_mlp the Torch executor's settings) with
    the recorded seed, and compare holdout metrics."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from mlops_assets import training
    from mlops_assets.training import TORCH_KIND, evaluate, split

    client = mlflow.client()
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ReproduceError(f"{name} v{version} does not exist in the registry") from exc
    run = client.get_run(found.run_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(client.download_artifacts(found.run_id, ARTIFACT_DIR, folder))
        except (MlflowException, OSError) as exc:
            raise ReproduceError(
                f"{name} v{version}: no recorded inputs in run {found.run_id} ({ARTIFACT_DIR}/); "
                "it was trained before governance was recorded"
            ) from exc
        spec = PipelineSpec.model_validate(json.loads((local / SPEC_FILE).read_text()))
        training_set = pd.read_parquet(local / TRAINING_SET_FILE)
        torch_file = local / TORCH_SETTINGS_FILE
        torch_settings = json.loads(torch_file.read_text()) if torch_file.is_file() else None
    if spec.model.kind == TORCH_KIND and torch_settings is None:
        raise ReproduceError(
            f"{name} v{version}: no recorded Torch executor settings ({ARTIFACT_DIR}/"
            f"{TORCH_SETTINGS_FILE}); it was trained before they were recorded"
        )
    recorded_version = found.tags.get(DATA_VERSION_TAG)
    actual_version = content_hash(training_set)
    if recorded_version != actual_version:
        raise ReproduceError(
            f"{name} v{version}: the logged training set hashes to {actual_version}, but the "
            f"version records data version {recorded_version}"
        )
    model = retrain(spec, training_set, torch_settings)
    metrics = evaluate(model, *split(training_set, spec, "holdout"), spec)
    rows = []
    for metric, value in sorted(metrics.items()):
        recorded = run.data.metrics.get(f"holdout_{metric}")  # torch also logs holdout_loss
        if recorded is not None:
            rows.append(
                {
                    "metric": metric,
                    "recorded": recorded,
                    "reproduced": value,
                    "match": abs(value - recorded) <= tolerance,
                }
            )
    return {
        "model": name,
        "version": str(version),
        "data_version": actual_version,
        "seed": spec.model.seed,
        "code_version": found.tags.get(CODE_VERSION_TAG),
        # The training stage's code version today, for the recorded spec: a difference explains
        # a mismatch (the code changed since the version was trained).
        "code_version_now": code_version(spec, "candidate_model", str(training.__file__)),
        "git_commit": found.tags.get("mlops.git_commit"),
        "metrics": rows,
        "match": bool(rows) and all(r["match"] for r in rows),
    }


def retrain(spec: PipelineSpec, training_set: Frame, torch_settings: dict[str, Any] | None) -> Any:
    """Fit the spec's model kind again as candidate_model did; torch_mlp with the recorded
    executor settings, from an empty checkpoint folder."""
    import logging

    from mlops_assets.training import TORCH_KIND, train_model
    from mlops_resources.torch_executor import TorchExecutorResource

    executor = TorchExecutorResource(**(torch_settings or {}))
    if spec.model.kind == TORCH_KIND:
        try:
            executor.resolve()
        except RuntimeError as exc:  # e.g. trained on cuda, and this machine has no GPU
            raise ReproduceError(
                f"{spec.model_name} was trained on {executor.device}: reproduce it on a "
                f"machine that has one ({exc})"
            ) from exc
    with tempfile.TemporaryDirectory() as checkpoints:
        return train_model(
            spec,
            training_set,
            executor,
            checkpoint_dir=Path(checkpoints),
            log=logging.getLogger("mlops_assets.reproduce"),
            log_metric=lambda name, value, step: None,
        )


# --- command line (python -m mlops_assets retire | reproduce) ---------------------------------


def retire_command(
    spec: PipelineSpec, defs: Any, instance: Any, version: str, reason: str, force: bool
) -> int:
    """Run the retirement job on the persistent instance as the current user; 0 when retired,
    1 when refused (the reason goes to stderr)."""
    config = {"version": version, "reason": reason, "force": force}
    with contextlib.redirect_stdout(sys.stderr):
        result = defs.resolve_job_def(scoped_name(spec, RETIRE_JOB)).execute_in_process(
            run_config={"ops": {scoped_name(spec, RETIRE_OP): {"config": config}}},
            instance=instance,
            tags={"user": getpass.getuser()},
            raise_on_error=False,
        )
    if not result.success:
        errors = [
            e.event_specific_data.error.message.strip()
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error
        ]
        print(f"not retired: {'; '.join(errors) or 'run failed'}", file=sys.stderr)
        return 1
    done = result.output_for_node(scoped_name(spec, RETIRE_OP))
    print(
        f"retired {spec.model_name} v{version} (aliases removed: "
        f"{', '.join(done['aliases_removed']) or 'none'}; dagster run {result.run_id})"
    )
    return 0


def reproduce_command(spec: PipelineSpec, version: str, as_json: bool) -> int:
    """Retrain a version from its recorded inputs and print recorded vs reproduced metrics;
    0 when every metric matches, 1 when one differs, 2 when the inputs are missing."""
    mlflow = MLflowResource()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = reproduce_version(mlflow, spec.model_name, version)
    except ReproduceError as exc:
        print(f"cannot reproduce: {exc}", file=sys.stderr)
        return 2
    mlflow.tag_version(
        spec.model_name,
        version,
        {
            "mlops.reproduced_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mlops.reproduced": "match" if result["match"] else "mismatch",
        },
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['model']} v{result['version']}: data version {result['data_version']}, "
            f"seed {result['seed']}, code version {result['code_version']} "
            f"(now {result['code_version_now']})"
        )
        for row in result["metrics"]:
            print(
                f"  {row['metric']:<10} recorded {row['recorded']:.6f} reproduced "
                f"{row['reproduced']:.6f} {'ok' if row['match'] else 'DIFFERS'}"
            )
        print("reproduced: same metrics" if result["match"] else "NOT reproduced")
    return 0 if result["match"] else 1
