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
import yaml
from dagster import AssetMaterialization, DagsterInstance, instance_for_test

from mlops_assets.demo_data import DRIFT_START, generate_day
from mlops_assets.drift import drift_tests
from mlops_assets.features import SPLIT_COLUMN, WEIGHT_COLUMN
from mlops_assets.keys import (
    ALARM_PARTITION_TAG,
    CHANGE_DAY_TAG,
    DRIFT_SENSOR,
    FOLLOWUP_TAG,
    RETRAIN_JOB,
    asset_key,
    scoped_name,
)
from mlops_assets.ml.dataset import split
from mlops_assets.ml.evaluation import evaluate
from mlops_assets.ml.gate import decide
from mlops_assets.ml.model_kinds import train_model
from mlops_assets.ml.windows import choose_window, holdout_mask
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import DEMO_SPEC_PATH, METRICS_BY_TASK, load_spec
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


def adaptive_spec(
    tmp_path: Path, kind: str = "linear", monitoring: dict | None = None, **window: object
):
    extra = {"monitoring": monitoring} if monitoring is not None else {}
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
        **extra,
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


def launched(instance, spec, request, promoted: bool) -> None:
    """What the daemon and the run leave behind for a retraining the drift sensor requested:
    a finished run with the sensor's tags, and its model_promotion (champion moved or not)."""
    from dagster import DagsterEvent, DagsterEventType, DagsterRunStatus
    from dagster._core.events import StepMaterializationData
    from dagster._core.test_utils import create_run_for_test

    tags = {
        **request.tags,
        "dagster/sensor_name": scoped_name(spec, DRIFT_SENSOR),
        "dagster/run_key": request.run_key,
        "dagster/partition": request.partition_key,
    }
    run = create_run_for_test(
        instance, job_name=request.job_name, tags=tags, status=DagsterRunStatus.SUCCESS
    )
    promotion = AssetMaterialization(
        asset_key=asset_key(spec, "model_promotion"),
        partition=request.partition_key,
        metadata={"champion_moved": promoted},
    )
    instance.report_dagster_event(
        DagsterEvent(
            DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name=request.job_name,
            event_specific_data=StepMaterializationData(promotion),
        ),
        run_id=run.run_id,
    )


def scored(instance, spec, day: date) -> None:
    """The champion scored `day` (so its labels must be evaluated before a follow-up)."""
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=asset_key(spec, "batch_predictions"), partition=str(day))
    )


def evaluated(instance, spec, day: date) -> None:
    """`day`'s labels evaluated: the champion served it within tolerance."""
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=asset_key(spec, "model_performance"),
            partition=str(day),
            metadata={"model_version": "2", "champion_version": "2", "degraded": False},
        )
    )


def drifted(instance, spec, day: date) -> None:
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=asset_key(spec, "drift_report"),
            partition=str(day),
            metadata={"model_version": "1", "drift_detected": True, "drift_share": 0.6},
        )
    )


def followup_setup(tmp_path: Path, followup_days: int):
    """A since_change spec with `followup_days`, its definitions and its drift sensor."""
    monitoring = yaml.safe_load(DEMO_SPEC_PATH.read_text()).get("monitoring", {})
    spec = adaptive_spec(tmp_path, monitoring={**monitoring, "followup_days": followup_days})
    defs = build_definitions(spec)
    return spec, defs, defs.resolve_sensor_def(scoped_name(spec, DRIFT_SENSOR))


def test_followups_retrain_each_newly_labelled_day_within_the_bound(tmp_path):
    """After the change's retraining moved the champion: one follow-up per newly labelled
    day, for that day, with the change's tag, once its labels are evaluated; the same run_key
    after a lost cursor; none beyond followup_days after the change."""
    spec, defs, sensor = followup_setup(tmp_path, followup_days=2)
    with instance_for_test() as instance:
        for day in (C - timedelta(days=1), C, C + timedelta(days=1)):
            arrive(spec, day)
        drifted(instance, spec, C)
        first = tick(sensor, instance, defs)
        [alarm_retrain] = first.run_requests
        assert alarm_retrain.run_key == f"retrain:alarm-{C}"
        launched(instance, spec, alarm_retrain, promoted=True)
        cursor = tick(sensor, instance, defs, first.cursor).cursor  # nothing newly labelled
        assert not tick(sensor, instance, defs, cursor).run_requests

        requested = []
        for offset in (1, 2, 3, 4):
            day = C + timedelta(days=offset)
            arrive(spec, day + timedelta(days=1))  # the labels of `day` are delivered
            scored(instance, spec, day)
            waiting = tick(sensor, instance, defs, cursor)
            assert not waiting.run_requests
            if offset <= 2:
                assert f"follow-up for {day} waits until its labels" in waiting.skip_message
            evaluated(instance, spec, day)
            result = tick(sensor, instance, defs, waiting.cursor)
            requested += result.run_requests
            if result.run_requests:
                [request] = result.run_requests
                assert request.job_name == scoped_name(spec, RETRAIN_JOB)
                assert request.partition_key == day.isoformat()
                assert request.run_key == f"retrain:followup-{C}-{day}"
                assert request.tags[CHANGE_DAY_TAG] == request.tags[ALARM_PARTITION_TAG] == str(C)
                assert request.tags[FOLLOWUP_TAG] == f"{offset}/2"  # starts no cooldown
                assert (
                    f"follow-up {offset} of 2 after the change of {C}"
                    in request.tags["mlops/trigger"]
                )
                again = tick(sensor, instance, defs, result.cursor)
                assert not again.run_requests  # requested once
                # a lost cursor asks the same run_key (Dagster drops it), nothing else
                assert [r.run_key for r in tick(sensor, instance, defs).run_requests] == [
                    request.run_key
                ]
                launched(instance, spec, request, promoted=offset == 1)  # 2nd: refused
            cursor = result.cursor
        assert [r.partition_key for r in requested] == [
            str(C + timedelta(days=1)),
            str(C + timedelta(days=2)),
        ]


def test_no_followups_without_an_adopted_change_or_when_disabled(tmp_path):
    """A stationary stream (no change retraining), a change whose retraining the gate
    refused, and followup_days 0: nothing beyond the alarm's retraining."""
    for followup_days, promoted in ((3, False), (0, True)):
        folder = tmp_path / str(followup_days)
        folder.mkdir()
        spec, defs, sensor = followup_setup(folder, followup_days)
        with instance_for_test() as instance:
            cursor = None
            for offset in range(-3, 1):  # stationary days: no change, nothing retrains
                arrive(spec, C + timedelta(days=offset + 1))
                scored(instance, spec, C + timedelta(days=offset))
                evaluated(instance, spec, C + timedelta(days=offset))
                quiet = tick(sensor, instance, defs, cursor)
                assert not quiet.run_requests, quiet.skip_message
                cursor = quiet.cursor
            drifted(instance, spec, C)
            first = tick(sensor, instance, defs, cursor)
            [alarm_retrain] = first.run_requests
            launched(instance, spec, alarm_retrain, promoted=promoted)
            cursor = first.cursor
            for offset in (1, 2):
                day = C + timedelta(days=offset)
                arrive(spec, day + timedelta(days=1))
                scored(instance, spec, day)
                evaluated(instance, spec, day)
                result = tick(sensor, instance, defs, cursor)
                assert not result.run_requests, result.skip_message
                if not promoted:
                    assert "the change is not adopted" in result.skip_message
                cursor = result.cursor


def test_followups_start_no_cooldown_and_a_new_alarm_takes_over(tmp_path):
    """Promoted follow-ups do not hold off a new alarm: its retraining comes
    retrain_cooldown_days (3) after the alarm retraining's promotion, for a new change day, and
    no follow-up of the old change is asked in the same tick."""
    spec, defs, sensor = followup_setup(tmp_path, followup_days=4)
    with instance_for_test() as instance:
        for day in (C, C + timedelta(days=1)):
            arrive(spec, day)
        drifted(instance, spec, C)
        first = tick(sensor, instance, defs)
        [request] = first.run_requests
        launched(instance, spec, request, promoted=True)
        cursor = first.cursor
        keys = []
        for offset in (1, 2, 3):
            day = C + timedelta(days=offset)
            arrive(spec, day + timedelta(days=1))
            if offset == 2:
                drifted(instance, spec, day)  # the concept moves on
            result = tick(sensor, instance, defs, cursor)
            [request] = result.run_requests
            assert request.partition_key == str(day)
            keys.append(request.run_key)
            launched(instance, spec, request, promoted=True)
            cursor = result.cursor
        assert keys == [
            f"retrain:followup-{C}-{C + timedelta(days=1)}",
            f"retrain:followup-{C}-{C + timedelta(days=2)}",
            f"retrain:alarm-{C + timedelta(days=2)}",
        ]
        assert request.tags[CHANGE_DAY_TAG] == str(C + timedelta(days=2))
        arrive(spec, C + timedelta(days=5))  # the follow-ups now follow the new change
        [request] = tick(sensor, instance, defs, cursor).run_requests
        assert (
            request.run_key == f"retrain:followup-{C + timedelta(days=2)}-{C + timedelta(days=4)}"
        )


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
