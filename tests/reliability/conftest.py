"""One small trained state shared by the reliability tests: a champion, a Feast online store and
a Dagster instance in their own MLOPS_HOME, so that no test here can disturb the `lifecycle`
state the other tests read."""

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from mlops_assets.demo_data import DEMO_START, write_demo_data
from mlops_assets.keys import INGEST_JOB, LIFECYCLE_JOB, asset_key, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import DEMO_SPEC_PATH, PipelineSpec, load_spec
from mlops_resources.mlflow_tracking import MLflowResource

ROWS_PER_DAY = 300
WINDOW_DAYS = 3
STATE_VARS = ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_CONFIG")


@dataclass(frozen=True)
class TrainedState:
    root: Path
    home: Path
    spec_path: Path
    spec: PipelineSpec
    trained_day: date

    @property
    def next_day(self) -> date:
        """The first day with demo data that has not been ingested."""
        return self.trained_day + timedelta(days=1)

    @property
    def env(self) -> dict[str, str]:
        return {"MLOPS_HOME": str(self.home), "DAGSTER_HOME": str(self.home / "dagster")}

    def write_spec(self, path: Path, **overrides: object) -> Path:
        """This state's spec with top-level `overrides` (whole sections replaced)."""
        raw = yaml.safe_load(self.spec_path.read_text())
        raw.update(overrides)
        path.write_text(yaml.safe_dump(raw))
        return path

    def fingerprint(self) -> dict[str, object]:
        """What bad input must never change: the champion, the registered versions, the Feast
        online store and registry, and the offline feature files."""
        mlflow = MLflowResource()
        feast = self.home / "feast"
        return {
            "champion": mlflow.champion(self.spec.model_name),
            "versions": sorted(
                int(v.version)
                for v in mlflow.client().search_model_versions(f"name='{self.spec.model_name}'")
            ),
            "online_store": file_digest(feast / "online.db"),
            "feast_registry": file_digest(feast / "registry.db"),
            "offline_files": sorted(p.name for p in (feast / "offline").rglob("*.parquet")),
        }


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_env(values: dict[str, str | None]) -> dict[str, str | None]:
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return saved


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedState]:
    """Ingest WINDOW_DAYS - 1 days of small demo data, then one lifecycle run that trains and
    promotes champion v1. Tests enter this state with the `in_trained` fixture."""
    root = tmp_path_factory.mktemp("reliability")
    home = root / "home"
    saved = set_env(
        {"MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "MLOPS_CONFIG": None}
    )
    try:
        (home / "dagster").mkdir(parents=True)
        write_demo_data(days=WINDOW_DAYS + 3, rows_per_day=ROWS_PER_DAY)
        raw = yaml.safe_load(DEMO_SPEC_PATH.read_text())
        raw["model"] = {**raw["model"], "training_window_days": WINDOW_DAYS, "holdout_days": 1}
        # A small holdout scores lower than the demo's; the gate stays a real two-sided gate.
        raw["gate"]["value_thresholds"] = {"roc_auc": {"min": 0.6}}
        spec_path = root / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(raw))
        spec = load_spec(spec_path)
        defs = build_definitions(spec)
        instance = DagsterInstance.get()
        days = [DEMO_START + timedelta(days=i) for i in range(WINDOW_DAYS)]
        for day in days:
            job = defs.resolve_job_def(
                scoped_name(spec, LIFECYCLE_JOB if day == days[-1] else INGEST_JOB)
            )
            result = job.execute_in_process(partition_key=day.isoformat(), instance=instance)
            assert result.success
        gate = result.asset_value(asset_key(spec, "model_promotion"))
        assert MLflowResource().champion(spec.model_name) == "1", gate["message"]
        yield TrainedState(root, home, spec_path, spec, days[-1])
    finally:
        set_env(saved)


@pytest.fixture
def in_trained(trained: TrainedState, monkeypatch: pytest.MonkeyPatch) -> TrainedState:
    """Point MLOPS_HOME and DAGSTER_HOME at the shared trained state for one test."""
    for key, value in trained.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLOPS_CONFIG", raising=False)
    import mlflow

    # MLflow's fluent API is process-wide: undo a previous test's store (an outage, say).
    uri = MLflowResource().resolved_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return trained
