"""Faults: MLflow unreachable, unwritable or full artifact storage, promotions racing, and a run
killed in the middle of a step. None of them leaves a wrong champion, a blessed half-registered
version, lost artifacts or an inconsistent online store."""

import json
import os
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    ExecuteInProcessResult,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from mlops_assets.features import feature_refs
from mlops_assets.keys import LIFECYCLE_JOB, asset_key, base_name, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import CHAMPION_ALIAS, MLflowResource
from mlops_resources.model_loading import load_registered_model
from tests.conftest import python_command, race_scripts
from tests.reliability.conftest import TrainedState
from tests.reliability.kill_target import lifecycle_job

SECRET = "s3cr3t-sentinel-7f1c"
PIPELINE = "loan_default"  # every spec here is a variant of the demo's
LIFECYCLE = scoped_name(PIPELINE, LIFECYCLE_JOB)
TRAIN_AND_GATE = [asset_key(PIPELINE, "candidate_model"), asset_key(PIPELINE, "model_promotion")]
ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def event_text(instance: DagsterInstance, run_id: str) -> str:
    """Every event of a run as text: messages, errors and metadata."""
    records = instance.all_logs(run_id)
    return "\n".join(
        f"{r.user_message} {r.dagster_event.event_specific_data if r.dagster_event else ''}"
        for r in records
    )


def retries(result: ExecuteInProcessResult, step: str) -> int:
    return sum(
        1
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY and base_name(e.step_key) == step
    )


@pytest.fixture
def fast_failing_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own HTTP retries would take minutes; Dagster's RetryPolicy is the bound."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.mark.parametrize("store", ["closed_port", "unwritable_sqlite"])
def test_mlflow_unreachable_fails_after_bounded_retries(
    in_trained: TrainedState, tmp_path: Path, monkeypatch, fast_failing_http, store: str
):
    state = in_trained
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mlops")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    if store == "closed_port":
        uri = f"http://127.0.0.1:{closed_port()}"
    else:
        (tmp_path / "not_a_folder").write_text("")
        uri = f"sqlite:///{tmp_path}/not_a_folder/mlflow.db"
    before = state.fingerprint()
    defs = build_definitions(state.spec, resources={"mlflow": MLflowResource(tracking_uri=uri)})
    instance = DagsterInstance.get()
    started = time.monotonic()
    result = defs.resolve_job_def(LIFECYCLE).execute_in_process(
        partition_key=state.trained_day.isoformat(),
        instance=instance,
        asset_selection=TRAIN_AND_GATE,
        raise_on_error=False,
    )
    elapsed = time.monotonic() - started

    assert not result.success
    assert retries(result, "candidate_model") == 2  # RetryPolicy(max_retries=2), then it fails
    assert elapsed < 120
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert base_name(failure.step_key) == "candidate_model"
    message = failure.step_failure_data.error.to_string()
    assert ("127.0.0.1" if store == "closed_port" else "not_a_folder") in message
    assert SECRET not in event_text(instance, result.run_id)
    assert state.fingerprint() == before


def test_mlflow_unreachable_during_promotion_leaves_no_blessed_version(
    in_trained: TrainedState, fast_failing_http
):
    state = in_trained
    day = state.trained_day.isoformat()
    instance = DagsterInstance.get()
    job = build_definitions(state.spec).resolve_job_def(LIFECYCLE)
    candidate = asset_key(PIPELINE, "candidate_model")
    trained = job.execute_in_process(
        partition_key=day, instance=instance, asset_selection=[candidate]
    )
    version = trained.asset_value(candidate)["version"]
    champion = MLflowResource().champion(state.spec.model_name)

    broken = MLflowResource(tracking_uri=f"http://127.0.0.1:{closed_port()}")
    result = (
        build_definitions(state.spec, resources={"mlflow": broken})
        .resolve_job_def(LIFECYCLE)
        .execute_in_process(
            partition_key=day,
            instance=instance,
            asset_selection=[asset_key(PIPELINE, "model_promotion")],
            raise_on_error=False,
        )
    )

    assert not result.success
    assert retries(result, "model_promotion") == 2
    mlflow = MLflowResource()
    assert mlflow.champion(state.spec.model_name) == champion
    tags = mlflow.client().get_model_version(state.spec.model_name, version).tags
    assert "mlops.blessed" not in tags and "mlops.promoted_at" not in tags


def blocked_artifacts(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "a_file").write_text("")
    return (tmp_path / "a_file" / "artifacts").as_uri(), "Not a directory"


def full_artifacts(tmp_path: Path) -> tuple[str, str]:
    folder = tmp_path / "tiny_fs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.decode().strip()}")
    return folder.as_uri(), "No space left on device"


@pytest.mark.parametrize(
    "make_store", [blocked_artifacts, full_artifacts], ids=["unwritable", "full"]
)
def test_unwritable_or_full_artifact_store_keeps_previous_artifacts(
    in_trained: TrainedState, tmp_path: Path, make_store
):
    state = in_trained
    artifact_uri, reason = make_store(tmp_path)
    try:
        mlflow = MLflowResource(
            experiment_name=f"artifacts-{tmp_path.name}", artifact_location=artifact_uri
        )
        before = state.fingerprint()
        result = (
            build_definitions(state.spec, resources={"mlflow": mlflow})
            .resolve_job_def(LIFECYCLE)
            .execute_in_process(
                partition_key=state.trained_day.isoformat(),
                instance=DagsterInstance.get(),
                asset_selection=TRAIN_AND_GATE,
                raise_on_error=False,
            )
        )
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert base_name(failure.step_key) == "candidate_model"
        assert reason in failure.step_failure_data.error.to_string()
        assert state.fingerprint() == before
        champion = MLflowResource().champion(state.spec.model_name)
        assert load_registered_model(state.spec.model_name, champion) is not None
    finally:
        if make_store is full_artifacts:
            subprocess.run(["umount", str(tmp_path / "tiny_fs")], check=False)


RACE_SCRIPT = """
import json, sys
from dagster import DagsterInstance
from mlops_assets.keys import asset_key
from tests.reliability.kill_target import lifecycle_job
names = ("training_set", "candidate_model", "model_promotion")
keys = [asset_key("loan_default", name) for name in names]
result = lifecycle_job().execute_in_process(
    partition_key=sys.argv[1], instance=DagsterInstance.get(), asset_selection=keys
)
verdict = result.asset_value(keys[-1])
print(json.dumps({"run_id": result.run_id, "verdict": verdict}, default=str))
"""


def test_two_racing_promotions_exactly_one_wins(
    in_trained: TrainedState, tmp_path: Path, monkeypatch
):
    """Two processes (as two run workers would) retrain two days and promote at about the same
    time with no champion in place: both are blessed on value thresholds, one moves the alias;
    the other either loses the compare-and-set and is re-judged against the winner, or comes
    second and is judged against it; either way it cannot beat the winner by the change
    threshold and records why. Secrets set in the environment appear nowhere in what the runs
    record. (Two runs of the *same* partition would overwrite each other's candidate_model
    value in the IO manager: Dagster's assets are one value per partition, see
    docs/reliability.md.)"""
    state = in_trained
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    gate = {
        "value_thresholds": {"roc_auc": {"min": 0.0}},  # any model trained here passes alone
        "change_thresholds": {"roc_auc": {"min_absolute_change": 0.3}},  # none beats another
    }
    # no slice or fairness rules: only the metric thresholds decide here
    spec_path = state.write_spec(tmp_path / "spec.yaml", gate=gate, governance={})
    monkeypatch.setenv("MLOPS_CONFIG", str(spec_path))
    spec = load_spec(spec_path)
    mlflow = MLflowResource()
    name = spec.model_name
    previous = mlflow.champion(name)
    mlflow.client().delete_registered_model_alias(name, CHAMPION_ALIAS)
    instance = DagsterInstance.get()
    try:
        days = (state.trained_day, state.trained_day - timedelta(days=1))
        reports = race_scripts(RACE_SCRIPT, [[day.isoformat()] for day in days], 600)
        verdicts = [report["verdict"] for report in reports]
        assert verdicts[0]["version"] != verdicts[1]["version"], verdicts
        winners = [v for v in verdicts if v["champion_moved"]]
        losers = [v for v in verdicts if not v["champion_moved"]]
        assert len(winners) == 1 and len(losers) == 1, verdicts
        winner, loser = winners[0]["version"], losers[0]
        assert mlflow.champion(name) == winner
        assert not loser["blessed"] and loser["baseline_version"] == winner, loser["message"]
        assert f"compared with champion v{winner}" in loser["message"]
        tags = mlflow.client().get_model_version(name, loser["version"]).tags
        assert tags["mlops.blessed"] == "false" and tags["mlops.baseline_version"] == winner
        assert "mlops.promoted_at" not in tags

        recorded = [event_text(instance, report["run_id"]) for report in reports]
        for verdict in verdicts:
            version = mlflow.client().get_model_version(name, verdict["version"])
            run = mlflow.client().get_run(version.run_id)
            recorded += [json.dumps(run.data.params), json.dumps(run.data.tags)]
            recorded.append(json.dumps(version.tags))
            folder = Path(mlflow.client().download_artifacts(version.run_id, "", str(tmp_path)))
            recorded += [p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file()]
        assert not [text for text in recorded if SECRET in text]
    finally:
        mlflow.client().set_registered_model_alias(name, CHAMPION_ALIAS, previous)


KILL_SCRIPT = """
import sys
from dagster import DagsterInstance
from tests.reliability.kill_target import lifecycle_job
lifecycle_job().execute_in_process(partition_key=sys.argv[1], instance=DagsterInstance.get())
"""


def wait_for_step_start(
    instance: DagsterInstance, step: str, process: subprocess.Popen, earlier: set[str]
) -> str:
    """The child's run id once `step` has started in it (bounded: 300 s)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for record in instance.get_run_records(limit=1):
            if record.dagster_run.run_id in earlier:
                continue
            for event in instance.all_logs(
                record.dagster_run.run_id, of_type=DagsterEventType.STEP_START
            ):
                if base_name(event.step_key) == step:
                    return record.dagster_run.run_id
        time.sleep(0.2)
    raise AssertionError(f"step {step} never started (child exit code {process.poll()})")


@pytest.mark.parametrize(
    ("step", "day_offset"), [("features", 0), ("candidate_model", 1), ("model_promotion", 2)]
)
def test_run_killed_mid_step_reexecutes_from_failure(
    in_trained: TrainedState, tmp_path: Path, monkeypatch, step: str, day_offset: int
):
    state = in_trained
    day = (state.next_day + timedelta(days=day_offset)).isoformat()
    monkeypatch.setenv("MLOPS_CONFIG", str(state.spec_path))
    instance = DagsterInstance.get()
    earlier = {r.dagster_run.run_id for r in instance.get_run_records()}
    child = subprocess.Popen(
        python_command(KILL_SCRIPT, day),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_id = wait_for_step_start(instance, step, child, earlier)
    finally:
        child.kill()
        child.wait(timeout=60)
    killed = instance.get_run_by_id(run_id)
    assert killed.status == DagsterRunStatus.STARTED  # nothing recorded the crash
    # What Dagster's run monitoring does for a run whose process died:
    instance.report_run_failed(killed)

    options = ReexecutionOptions.from_failure(run_id, instance)
    with execute_job(
        reconstructable(lifecycle_job),
        instance=instance,
        reexecution_options=options,
        tags={k: v for k, v in killed.tags.items() if k.startswith("dagster/partition")},
        run_config={"execution": {"config": {"in_process": {}}}},
    ) as result:
        assert result.success
        assert step in {base_name(e.step_key) for e in result.all_events if e.is_step_success}

    mlflow = MLflowResource()
    name = state.spec.model_name
    versions = mlflow.client().search_model_versions(f"name='{name}'")
    champion = mlflow.champion(name)
    assert (
        sum(1 for v in versions if v.tags.get("mlops.promoted_at") and v.version == int(champion))
        == 1
    )
    partition_versions = [v for v in versions if v.tags.get("mlops.partition") == day]
    assert sum(1 for v in partition_versions if v.tags.get("mlops.blessed") == "true") <= 1
    assert_online_store_matches_offline(state, day)


def assert_online_store_matches_offline(state: TrainedState, day: str) -> None:
    spec = state.spec
    offline = pd.read_parquet(state.home / "feast" / "offline" / spec.name / f"{day}.parquet")
    latest = offline.sort_values(spec.timestamp).groupby(spec.entity_key).tail(1).head(20)
    online = FeastResource().online_features(
        [{spec.entity_key: key} for key in latest[spec.entity_key]], feature_refs(spec)
    )
    pd.testing.assert_frame_equal(
        online[spec.feature_names].reset_index(drop=True),
        latest[spec.feature_names].reset_index(drop=True),
        check_dtype=False,
    )
