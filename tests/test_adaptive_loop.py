"""Continuous training that adapts: honest label time, the retraining's partition and window,
recency weights reaching every model kind, a gate that judges on the current regime, and a
drift reference that follows the data the model learned from. Real Dagster sensors, real
scikit-learn / torch training through the suite's train_model, real Evidently."""

import logging
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetMaterialization, DagsterInstance, instance_for_test

from mlops_assets.demo_data import DRIFT_START, generate_day
from mlops_assets.features import SPLIT_COLUMN, WEIGHT_COLUMN
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    CHANGE_DAY_TAG,
    DRIFT_SENSOR,
    RETRAIN_JOB,
    asset_key,
    scoped_name,
)
from mlops_assets.ml.dataset import split
from mlops_assets.ml.evaluation import evaluate
from mlops_assets.ml.gate import decide
from mlops_assets.ml.model_kinds import train_model
from mlops_assets.ml.windows import choose_window, holdout_mask
from mlops_assets.monitoring import drift_tests
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import METRICS_BY_TASK, load_spec
from mlops_resources.drift_detection import EvidentlyResource
from mlops_resources.torch_executor import TorchExecutorResource
from tests.conftest import write_spec
from tests.test_closed_loop import tick

C = date(2024, 3, 10)  # the change day of the synthetic streams below


def flipped(day: date, rows: int, after_change: bool) -> pd.DataFrame:
    """Demo rows whose label is a clean rule of income, inverted after the change."""
    frame = generate_day(day, rows)
    high = frame["income"] > frame["income"].median()
    frame["defaulted"] = (high if after_change else ~high).astype(int).astype(str)  # as validated
    return frame


def training_frame(spec, days: list[date], weights: dict[date, float] | None = None):
    rows = pd.concat([flipped(d, 300, d >= C) for d in days], ignore_index=True)
    rows = rows.sort_values(spec.timestamp).reset_index(drop=True)
    row_days = rows[spec.timestamp].dt.date
    rows[SPLIT_COLUMN] = holdout_mask(spec, row_days, rows[spec.timestamp], days).map(
        {True: "holdout", False: "train"}
    )
    rows[WEIGHT_COLUMN] = row_days.map(weights or {}).fillna(1.0)
    return rows


def adaptive_spec(tmp_path: Path, kind: str = "linear", **window: object):
    raw = write_spec(
        tmp_path / "spec.yaml",
        source={"path": str(tmp_path / "data" / "loans_{date}.parquet")},
        model={
            "kind": kind,
            "training_window_days": 8,
            "holdout_days": 2,
            "window": {"policy": "since_change", "min_rows": 200, **window},
        },
        governance={},
    )
    return load_spec(raw)


def arrive(spec, day: date) -> None:
    """A source file for `day` (the sensors read arrival from file names)."""
    path = Path(spec.source_pattern().replace("{date}", day.isoformat()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["linear", "torch_mlp"])
def test_recency_weights_reach_every_model_kind(tmp_path, kind):
    """Old rows follow the old concept, new rows the new one: a weighted fit follows the
    new concept, the same rows unweighted do not."""
    spec = adaptive_spec(tmp_path, kind)
    days = [C - timedelta(days=5 - i) for i in range(8)]  # train: 5 old days and C
    weights = {d: (1.0 if d >= C else 0.01) for d in days}
    executor = TorchExecutorResource(max_epochs=15)
    new_rows = flipped(C + timedelta(days=3), 400, after_change=True)
    X_new, y_new = new_rows[spec.feature_names], new_rows[spec.label]
    auc = {}
    for name, frame in (
        ("weighted", training_frame(spec, days, weights)),
        ("unweighted", training_frame(spec, days)),
    ):
        model = train_model(
            spec,
            frame,
            executor,
            checkpoint_dir=tmp_path / name,
            log=logging.getLogger("test"),
            log_metric=lambda *args: None,
        )
        auc[name] = evaluate(model, X_new, y_new, spec)["roc_auc"]
    assert auc["weighted"] > 0.8 > auc["unweighted"], auc


def test_gate_on_the_current_regime_refuses_a_stale_trained_candidate(tmp_path):
    """A candidate trained on a window with one post-change day looks fine on a stale
    (pre-change) holdout and is blessed there; judged on the newest labelled rows after the
    change, the same candidate is refused."""
    spec = adaptive_spec(tmp_path)
    window = [C - timedelta(days=7 - i) for i in range(8)]  # 7 old days and the change day
    frame = training_frame(spec, window)
    stale_trained = train_model(
        spec,
        frame.assign(**{SPLIT_COLUMN: "train"}),
        TorchExecutorResource(),
        checkpoint_dir=tmp_path / "c",
        log=logging.getLogger("test"),
        log_metric=lambda *args: None,
    )
    directions = METRICS_BY_TASK[spec.task]
    stale = training_frame(spec, window[:-1])  # its holdout: the two days before the change
    stale_verdict = decide(
        spec.gate,
        directions,
        evaluate(stale_trained, *split(stale, spec, "holdout"), spec),
        None,
        None,
    )
    assert stale_verdict.blessed, stale_verdict.message

    choice = choose_window(spec, C, {d: 300 for d in window}, change_day=C)
    assert choice.policy == "since_change" and choice.days == [C]
    current = training_frame(spec, choice.days)
    verdict = decide(
        spec.gate,
        directions,
        evaluate(stale_trained, *split(current, spec, "holdout"), spec),
        None,
        None,
    )
    assert not verdict.blessed and "roc_auc" in verdict.message


def test_drift_quiets_once_the_reference_follows_the_new_data(tmp_path):
    """After adapting, the reference is the post-change training rows: the next post-change
    day no longer drifts against it, while it does against the pre-change reference."""
    spec = load_spec(write_spec(tmp_path / "spec.yaml"))
    before = pd.concat([generate_day(DRIFT_START - timedelta(days=i), 500) for i in (3, 4)])
    after = pd.concat([generate_day(DRIFT_START + timedelta(days=i), 500) for i in (0, 1)])
    today = generate_day(DRIFT_START + timedelta(days=2), 500)
    numeric = [f.name for f in spec.features if f.type == "numeric"]
    categorical = [f.name for f in spec.features if f.type == "categorical"]
    tests = {c: t for c, t in drift_tests(spec).items() if c in numeric + categorical}
    shares = {}
    for name, reference in (("pre-change", before), ("adapted", after)):
        outcome = EvidentlyResource().compare(
            reference, today, numeric, categorical, tests, sample_size=5000
        )
        shares[name] = outcome.share(spec.feature_names)
    threshold = spec.monitoring.drift.drift_share
    assert shares["pre-change"] >= threshold > shares["adapted"], shares


def test_retraining_waits_for_labels_after_the_alarm_and_trains_the_newest_day(tmp_path):
    """Drift on day C: no retraining while C's labels are undelivered (it would learn nothing
    of the change); once C+1 arrives, one `retrain` for C (the newest labelled day), its
    window starting at C, with the alarm in its tags."""
    spec = adaptive_spec(tmp_path)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, DRIFT_SENSOR))
    with instance_for_test() as instance:
        for day in (C - timedelta(days=1), C):
            arrive(spec, day)
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=asset_key(spec, "drift_report"),
                partition=C.isoformat(),
                metadata={"model_version": "1", "drift_detected": True, "drift_share": 0.6},
            )
        )
        first = tick(sensor, instance, defs)
        assert not first.run_requests
        assert "alarm kept until labels of 2024-03-10 are delivered" in first.skip_message
        arrive(spec, C + timedelta(days=1))
        second = tick(sensor, instance, defs, first.cursor)
        [request] = second.run_requests
        assert request.job_name == scoped_name(spec, RETRAIN_JOB)
        assert request.partition_key == C.isoformat()
        assert request.tags[CHANGE_DAY_TAG] == request.tags[ALARM_PARTITION_TAG] == "2024-03-10"
        assert not tick(sensor, instance, defs, second.cursor).run_requests  # alarm consumed


def test_degradation_of_a_replaced_version_is_no_alarm(tmp_path):
    """Labels of days served by a version that is no longer the champion say nothing about
    the champion: no retraining, and the decision is recorded on the asset."""
    spec = adaptive_spec(tmp_path)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, DRIFT_SENSOR))
    with instance_for_test() as instance:
        arrive(spec, C + timedelta(days=1))
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=asset_key(spec, "model_performance"),
                partition=C.isoformat(),
                metadata={
                    "model_version": "1",
                    "champion_version": "2",
                    "degraded": True,
                    "degraded_metrics": ["roc_auc"],
                },
            )
        )
        result = tick(sensor, instance, defs)
        assert not result.run_requests
        assert "v2 is the champion now" in result.skip_message
        [observation] = result.asset_events
        assert "no action" in observation.metadata["drift_sensor_decision"].value


def test_no_training_set_uses_a_label_before_its_delivery(lifecycle):
    """Every training_set of the story: its label cutoff is before the day it was built for
    when that day's own file had just arrived (lifecycle runs), and no row is after the
    cutoff."""
    instance = DagsterInstance.get()
    spec = lifecycle["spec"]
    lifecycle_days = {
        r["partition"] for r in lifecycle["summary"]["runs"] if r["job"] == "lifecycle"
    }
    records = instance.fetch_materializations(asset_key(spec, "training_set"), limit=200).records
    assert records
    storage = lifecycle["home"] / "storage" / spec.name / "training_set"
    lag = lifecycle["spec"].monitoring.performance.label_delay_days
    for record in records:
        partition = record.partition_key
        cutoff = date.fromisoformat(record.asset_materialization.metadata["label_cutoff"].value)
        assert cutoff <= date.fromisoformat(partition)
        if partition in lifecycle_days:
            assert cutoff == date.fromisoformat(partition) - timedelta(days=lag)
    for path in storage.glob("*.parquet"):  # tables between steps are Parquet files
        frame = pd.read_parquet(path)
        newest = frame[lifecycle["spec"].timestamp].dt.date.max()
        assert newest <= date.fromisoformat(path.stem) - timedelta(days=lag) or (
            path.stem not in lifecycle_days
        )
        assert np.isfinite(frame[WEIGHT_COLUMN]).all()
