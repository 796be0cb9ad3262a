"""Labels as their own source (spec `labels:`): the feature files hold no label column, a label
file counts only once delivered (label_delay_days after its events, by the newest arrived source
day) whatever is on disk earlier, and every bad label file is refused naming the file, the column
and the rule. Real Dagster jobs, GX, Feast and MLflow."""

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance

from mlops_assets.demo_data import generate_day
from mlops_assets.keys import FEEDBACK_JOB, INGEST_JOB, LIFECYCLE_JOB, asset_key
from mlops_assets.labels import LabelSourceError, read_labels
from mlops_assets.spec import SpecError, load_spec
from mlops_resources.instance import write_instance_yaml
from tests.conftest import write_spec
from tests.test_closed_loop import run_job

DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(5)]
ROWS = 240
KEYS = ["customer_id", "event_timestamp"]


def label_spec(tmp_path: Path, **overrides: object) -> Path:
    sections = {
        "source": {"path": str(tmp_path / "data" / "loans_{date}.parquet")},
        "labels": {"path": str(tmp_path / "labels" / "labels_{date}.parquet")},
        "online_features": False,
        "model": {
            "kind": "linear",
            "training_window_days": 3,
            "holdout_days": 1,
            "window": {"policy": "sliding"},
        },
        "gate": {"value_thresholds": {"roc_auc": {"min": 0.5}}},
        "governance": {},
    }
    return write_spec(tmp_path / "spec.yaml", **{**sections, **overrides})


def write_day(tmp_path: Path, day: date, *, features: bool = True) -> pd.DataFrame:
    """The day's feature file (no label column) and its label file; returns the labels."""
    frame = generate_day(day, ROWS)
    labels = frame[[*KEYS, "defaulted"]]
    (tmp_path / "labels").mkdir(exist_ok=True)
    labels.to_parquet(tmp_path / "labels" / f"labels_{day.isoformat()}.parquet", index=False)
    if features:
        (tmp_path / "data").mkdir(exist_ok=True)
        frame.drop(columns=["defaulted"]).to_parquet(
            tmp_path / "data" / f"loans_{day.isoformat()}.parquet", index=False
        )
    return labels


def test_labels_from_their_own_files_count_only_once_delivered(home, tmp_path):
    spec_path = label_spec(tmp_path)
    spec = load_spec(spec_path)
    write_instance_yaml(home / "dagster")  # what the CLI does before its first run
    # Every label file is on disk from the start, the last two ahead of their delivery.
    labels = {d: write_day(tmp_path, d, features=d <= DAYS[3]) for d in DAYS}
    for day in DAYS[:3]:
        assert run_job(spec_path, INGEST_JOB, day.isoformat()).success
    assert run_job(spec_path, LIFECYCLE_JOB, DAYS[3].isoformat()).success

    offline = home / "feast" / "offline" / spec.name / f"{DAYS[0].isoformat()}.parquet"
    assert "defaulted" not in pd.read_parquet(offline).columns

    # Arrived up to 01-04 with a 1-day delay: the 01-04 run learns from labels up to 01-03 only,
    # and each of them is the label file's value.
    stored = home / "storage" / spec.name / "training_set" / f"{DAYS[3].isoformat()}.parquet"
    training = pd.read_parquet(stored)
    assert training["event_timestamp"].dt.date.max() == DAYS[2]
    delivered = pd.concat([labels[d] for d in DAYS[:3]]).astype({"defaulted": str})
    joined = training[[*KEYS, "defaulted"]].merge(delivered, on=KEYS, suffixes=("", "_file"))
    assert len(joined) == len(training) == 3 * ROWS
    assert (joined["defaulted"] == joined["defaulted_file"]).all()

    # 01-05's file arrives: the labels of 01-04 are due, and model_performance scores the
    # predictions served on 01-04 on them.
    write_day(tmp_path, DAYS[4])
    assert run_job(spec_path, FEEDBACK_JOB, DAYS[3].isoformat()).success
    record = (
        DagsterInstance.get()
        .fetch_materializations(asset_key(spec, "model_performance"), limit=1)
        .records[0]
    )
    assert record.partition_key == DAYS[3].isoformat()
    assert record.asset_materialization.metadata["labelled_rows"].value == ROWS


@pytest.mark.parametrize(
    ("broken", "column", "rule"),
    [
        (lambda f: f.drop(columns=["defaulted"]), r"\['defaulted'\]", "missing"),
        (lambda f: f.assign(defaulted=f["defaulted"].where(f.index > 2)), "'defaulted'", "null"),
        (lambda f: f.assign(defaulted=7), "'defaulted'", r"one of \['0', '1'\]"),
        (
            lambda f: f.assign(event_timestamp=f["event_timestamp"] + pd.Timedelta(days=1)),
            "'event_timestamp'",
            "must lie in 2024-01-01",
        ),
        (lambda f: pd.concat([f, f.head(2)]), "'customer_id\\+event_timestamp'", "unique"),
    ],
)
def test_a_bad_label_file_names_the_file_column_and_rule(tmp_path, broken, column, rule):
    spec = load_spec(label_spec(tmp_path))
    labels = write_day(tmp_path, DAYS[0], features=False)
    path = tmp_path / "labels" / f"labels_{DAYS[0].isoformat()}.parquet"
    broken(labels).to_parquet(path, index=False)
    with pytest.raises(LabelSourceError, match=rf"{path}.*{column}.*{rule}"):
        read_labels(spec, DAYS[0])


def test_a_label_path_needs_a_date_and_the_pandas_engine(tmp_path):
    with pytest.raises(SpecError, match=r"labels.*needs \{date\}"):
        load_spec(label_spec(tmp_path, labels={"path": "labels.parquet"}))
    with pytest.raises(SpecError, match="labels: a label source is not supported with engine"):
        load_spec(label_spec(tmp_path, engine="spark"))


def test_late_or_failed_label_feedback_never_stops_new_days(home, tmp_path):
    """A label file that is due but absent, or whose label_feedback run failed, does not hold
    the next days' scoring; its arrival (or a new delivery) requests label_feedback once."""
    import os

    from dagster import (
        AssetMaterialization,
        DagsterRun,
        DagsterRunStatus,
        build_sensor_context,
    )

    from mlops_assets.keys import DAILY_JOB, NEW_DATA_SENSOR, RUN_KEY_TAG, scoped_name
    from mlops_assets.pipeline import build_definitions

    spec_path = label_spec(tmp_path)
    spec = load_spec(spec_path)
    for day in DAYS[:3]:
        write_day(tmp_path, day)
    label_file = tmp_path / "labels" / f"labels_{DAYS[0].isoformat()}.parquet"
    delivered = label_file.read_bytes()
    label_file.unlink()  # 01-01's labels are due (01-03 has arrived) but late
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(scoped_name(spec, NEW_DATA_SENSOR))
    feedback_job, daily_job = scoped_name(spec, FEEDBACK_JOB), scoped_name(spec, DAILY_JOB)
    write_instance_yaml(home / "dagster")
    instance = DagsterInstance.get()
    for asset in ("validated_data", "batch_predictions"):  # 01-01 was scored
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key(spec, asset), partition=DAYS[0].isoformat())
        )

    def tick() -> list:
        with build_sensor_context(instance=instance, definitions=defs) as context:
            result = sensor.evaluate_tick(context)
        return [(r.job_name, r.partition_key, r.run_key) for r in result.run_requests or []]

    requested = tick()
    assert {r[:2] for r in requested} == {(daily_job, d.isoformat()) for d in DAYS[:3]}

    label_file.write_bytes(delivered)  # it arrives: requested once, before the next days
    [(job, partition, run_key)] = tick()
    assert (job, partition) == (feedback_job, DAYS[0].isoformat())
    stat = label_file.stat()
    assert run_key == f"{FEEDBACK_JOB}:{DAYS[0].isoformat()}:{stat.st_mtime_ns}:{stat.st_size}"

    instance.add_run(  # its run failed (as a broken label file makes it fail)
        DagsterRun(
            job_name=feedback_job,
            run_id="feedback-failed",
            status=DagsterRunStatus.FAILURE,
            tags={RUN_KEY_TAG: run_key},
        )
    )
    requested = tick()
    assert {r[:2] for r in requested} == {(daily_job, d.isoformat()) for d in DAYS[:3]}

    os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # delivered again
    [(job, partition, again)] = tick()
    assert (job, partition) == (feedback_job, DAYS[0].isoformat()) and again != run_key


def test_a_label_file_outside_the_data_roots_is_refused(home, tmp_path, tmp_path_factory):
    """Label files are read only inside the data roots, as source files are (a link followed)."""
    spec = load_spec(label_spec(tmp_path))
    labels = write_day(tmp_path, DAYS[0], features=False)
    outside = tmp_path_factory.mktemp("outside") / "labels.parquet"
    labels.to_parquet(outside, index=False)
    path = tmp_path / "labels" / f"labels_{DAYS[0].isoformat()}.parquet"
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(LabelSourceError, match=rf"{path}: outside the allowed data roots"):
        read_labels(spec, DAYS[0])
