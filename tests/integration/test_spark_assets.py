"""The asset graph with `engine: spark` against `engine: pandas` (issue 16 items 1 and 3): the
same short demo stream materialized through Dagster by each engine, in its own MLOPS_HOME;
then the answers compared: validation verdicts rule by rule (a good day and a bad one), the
training set, the champion's batch predictions and the drift verdict. Spark runs local[2] in
this process, started by the first spark step and stopped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import materialize

pytest.importorskip("pyspark", reason="pyspark is in the integration extra")

from mlops_assets.demo_data import DRIFT_START, generate_day  # noqa: E402
from mlops_assets.keys import asset_key  # noqa: E402
from mlops_assets.pipeline import build_assets, default_resources  # noqa: E402
from mlops_assets.spec import DEMO_SPEC_PATH, load_spec  # noqa: E402
from mlops_assets.validation import GX_CHECK  # noqa: E402
from mlops_resources.feast_store import FeastResource  # noqa: E402
from mlops_resources.spark import SPARK_IO_MANAGER, SparkResource, SparkTableIOManager  # noqa: E402
from tests.integration.conftest import local_profile  # noqa: E402

ROWS = 300
START = DRIFT_START - timedelta(days=4)
INGEST = [START + timedelta(days=i) for i in range(4)]  # training at the 4th: labels of 3
SCORED = DRIFT_START  # scored by the champion: the demo's drift day
BAD = DRIFT_START + timedelta(days=1)
INGEST_ASSETS = ["raw_data", "validated_data", "features", "online_features"]


def write_stream(data: Path) -> None:
    data.mkdir(parents=True)
    for day in [*INGEST, SCORED]:
        generate_day(day, ROWS).to_parquet(data / f"loans_{day}.parquet", index=False)
    bad = generate_day(BAD, ROWS)
    bad.loc[3, "income"] = np.nan
    bad.loc[4, "credit_score"] = 9999.0
    bad.loc[5, "region"] = "mars"
    bad.to_parquet(data / f"loans_{BAD}.parquet", index=False)


def run_engine(engine: str, root: Path, spark: SparkResource) -> dict[str, Any]:
    """The stream through one engine: ingest days, training and promotion, a scored day with
    drift, and the bad day; what each step answered."""
    write_stream(root / "home" / "demo_data")
    spec = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    spec.update(
        engine=engine,
        online_features=True,
        model={**spec["model"], "training_window_days": 3, "holdout_days": 1},
        gate={"value_thresholds": {"roc_auc": {"min": 0.5}}},
    )
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    spec = load_spec(root / "spec.yaml")
    assets = build_assets(spec)
    resources = {
        **default_resources(),
        "spark": spark,
        SPARK_IO_MANAGER: SparkTableIOManager(spark=spark),
    }

    def run(names: list[str], day: Any) -> Any:
        return materialize(
            assets,
            selection=[asset_key(spec, n) for n in names],
            partition_key=day.isoformat(),
            resources=resources,
            raise_on_error=False,
        )

    checks = {}
    for day in [*INGEST, SCORED, BAD]:
        result = run(INGEST_ASSETS if day != BAD else INGEST_ASSETS[:2], day)
        (evaluation,) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == GX_CHECK
        ]
        failed = evaluation.metadata["failed_expectations"].value
        checks[day] = (evaluation.passed, {f["rule"]: f["unexpected_count"] for f in failed})
    scored = generate_day(SCORED, ROWS)
    entities = [{spec.entity_key: key} for key in scored[spec.entity_key].head(25)]
    refs = [f"{spec.name}_features:{name}" for name in spec.feature_names]
    online = FeastResource().online_feature_values(entities, refs)
    training = run(["training_set", "candidate_model", "model_promotion"], INGEST[-1])
    assert training.success
    scoring = run(["batch_predictions", "drift_report"], SCORED)
    assert scoring.success
    drift = next(
        event.step_materialization_data.materialization.metadata
        for event in scoring.get_asset_materialization_events()
        if event.asset_key == asset_key(spec, "drift_report")
    )
    if engine == "spark":  # the tables the spark_io_manager wrote, read as pandas
        table = Path(os.environ["MLOPS_HOME"]) / "spark" / spec.name / "batch_predictions"
        predictions = pd.read_parquet(table / SCORED.isoformat())
    else:
        predictions = scoring.asset_value(asset_key(spec, "batch_predictions"))
    return {
        "checks": checks,
        "training_set": training.asset_value(asset_key(spec, "training_set")),
        "predictions": predictions,
        "drift": {k: v.value for k, v in drift.items()},
        "online": online,
        "spec": spec,
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    spark = SparkResource(stop_after_step=False)
    try:
        results = {}
        for engine in ("spark", "pandas"):
            root = tmp_path_factory.mktemp(engine)
            with local_profile(root):
                results[engine] = run_engine(engine, root, spark)
        yield results
    finally:
        spark.stop()
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()


def test_validation_verdicts_rule_by_rule(engines: dict[str, dict[str, Any]]) -> None:
    assert engines["spark"]["checks"] == engines["pandas"]["checks"]
    passed, failed = engines["spark"]["checks"][BAD]
    assert not passed and len(failed) == 3, failed
    assert all(engines["spark"]["checks"][d][0] for d in [*INGEST, SCORED])


def test_same_training_set(engines: dict[str, dict[str, Any]]) -> None:
    by_pandas, by_spark = engines["pandas"]["training_set"], engines["spark"]["training_set"]
    spec = engines["spark"]["spec"]
    assert len(by_spark) == len(by_pandas) == 3 * ROWS
    for frame in (by_pandas, by_spark):
        frame[spec.label] = frame[spec.label].astype(str)
    columns = list(by_pandas.columns)
    pd.testing.assert_frame_equal(by_spark[columns], by_pandas, check_dtype=False)


def test_same_predictions_and_drift_verdict(engines: dict[str, dict[str, Any]]) -> None:
    spec = engines["spark"]["spec"]
    keys = [spec.entity_key, spec.timestamp]
    by_pandas, by_spark = engines["pandas"]["predictions"], engines["spark"]["predictions"]
    for frame in (by_pandas, by_spark):
        frame[spec.timestamp] = pd.to_datetime(frame[spec.timestamp], utc=True)
    merged = by_pandas.merge(by_spark, on=keys, suffixes=("_pandas", "_spark"))
    assert len(merged) == len(by_pandas) == len(by_spark) == ROWS
    assert (merged["prediction_pandas"].astype(str) == merged["prediction_spark"]).all()
    np.testing.assert_allclose(merged["score_spark"], merged["score_pandas"], atol=1e-6)
    drift_pandas, drift_spark = engines["pandas"]["drift"], engines["spark"]["drift"]
    for key in ("drift_detected", "drifted_columns", "prediction_drift", "current_rows"):
        assert drift_spark[key] == drift_pandas[key], key
    assert drift_spark["drift_detected"] is True  # the demo's drift day


def test_same_online_features(engines: dict[str, dict[str, Any]]) -> None:
    """online_features: the same newest values per entity in each engine's online store."""
    by_pandas, by_spark = engines["pandas"]["online"], engines["spark"]["online"]
    assert by_spark == by_pandas
    spec = engines["spark"]["spec"]
    assert all(v is not None for v in by_spark[spec.feature_names[0]])
