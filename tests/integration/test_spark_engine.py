"""Same answers from both engines (issue 16 item 3): a short demo stream through the pandas
engine and the spark engine (Spark local[2], started and stopped here), compared stage by
stage: validation verdicts rule by rule (with counts and sample values), the point-in-time
training rows, the champion's predictions (float tolerance) and the drift verdicts.

Real tools throughout: Spark, GX's Spark datasource, Feast's file and Spark offline stores,
MLflow's registry with a skops model, Evidently. ~3-5 min on 2 shared cores (Spark's start
is most of it).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason="pyspark is in the integration extra")

from mlops_assets import features as pandas_features  # noqa: E402
from mlops_assets.data import read_partition  # noqa: E402
from mlops_assets.demo_data import DRIFT_START, generate_day  # noqa: E402
from mlops_assets.drift import current_frame, drift_tests  # noqa: E402
from mlops_assets.ml.estimators import build_estimator  # noqa: E402
from mlops_assets.ml.evaluation import score  # noqa: E402
from mlops_assets.ml.model_kinds import log_sklearn_model  # noqa: E402
from mlops_assets.spark_engine import offline, reading, sampling, scoring  # noqa: E402
from mlops_assets.spark_engine import validation as spark_validation  # noqa: E402
from mlops_assets.spec import DEMO_SPEC_PATH, PREDICTION_COLUMN, load_spec  # noqa: E402
from mlops_assets.validation import build_expectations, standardize  # noqa: E402
from mlops_resources.drift_detection import EvidentlyResource  # noqa: E402
from mlops_resources.feast_store import FeastResource  # noqa: E402
from mlops_resources.mlflow_tracking import MLflowResource  # noqa: E402
from mlops_resources.model_loading import load_registered_model  # noqa: E402
from mlops_resources.spark import SparkResource  # noqa: E402
from mlops_resources.validation import GreatExpectationsResource  # noqa: E402
from tests.integration.conftest import local_profile  # noqa: E402

ROWS = 300
# Two days before the demo's drift, the drift day, and one day with defects of every kind.
DAYS = [DRIFT_START - timedelta(days=2), DRIFT_START - timedelta(days=1), DRIFT_START]
BAD_DAY = DRIFT_START + timedelta(days=1)
# Rules whose sample values read alike in both engines (null rules show None vs nan, the
# uniqueness rule a datetime vs a pandas Timestamp; their counts are compared all the same).
SAMPLE_RULES_DIFFER = ("expect_column_values_to_not_be_null", "expect_compound_columns_to_be")


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """MLOPS_HOME with the demo days (one of them defective) as Parquet and the bad day also
    as CSV; the spec; a Spark local[2] session stopped at the end."""
    root = tmp_path_factory.mktemp("spark_engine")
    with local_profile(root):
        yield from stream_in(root)


def stream_in(root: Path) -> Iterator[dict[str, Any]]:
    data = root / "home" / "demo_data"
    data.mkdir(parents=True)
    for day in DAYS:
        generate_day(day, ROWS).to_parquet(data / f"loans_{day}.parquet", index=False)
    bad = generate_day(BAD_DAY, ROWS)
    bad.loc[3, "income"] = np.nan
    bad.loc[4, "credit_score"] = 9999.0
    bad.loc[5, "region"] = "mars"
    bad.loc[6, "customer_id"] = "X1"
    bad.loc[7, ["customer_id", "event_timestamp"]] = bad.loc[
        8, ["customer_id", "event_timestamp"]
    ].to_numpy()
    bad.to_parquet(data / f"loans_{BAD_DAY}.parquet", index=False)
    bad.to_csv(root / f"loans_{BAD_DAY}.csv", index=False)
    spark = SparkResource()
    try:
        yield {
            "root": root,
            "spec": load_spec(DEMO_SPEC_PATH),
            "session": spark.session(),
            "resource": spark,
        }
    finally:
        spark.stop()


def report(outcome: Any) -> dict[str, tuple]:
    """rule -> (unexpected count, element count, sample values) of the failed rules."""
    return {
        f.rule(): (f.unexpected_count, f.element_count, sorted(f.sample)) for f in outcome.failures
    }


def test_local_session_is_loopback_only(stream: dict[str, Any]) -> None:
    conf = stream["session"].sparkContext.getConf()
    assert stream["session"].sparkContext.master == "local[2]"
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false"
    assert int(conf.get("spark.driver.port")) < 32768


def test_validation_verdicts_rule_by_rule(stream: dict[str, Any]) -> None:
    spec, session = stream["spec"], stream["session"]
    gx = GreatExpectationsResource()
    for day in [*DAYS, BAD_DAY]:
        raw, _ = read_partition(spec, day)
        by_pandas = gx.validate(standardize(raw, spec), "p", build_expectations(spec, day))
        frame, _ = reading.read_partition(session, spec, day)
        by_spark = spark_validation.validate(
            gx, spark_validation.standardize(frame, spec), spec, day
        )
        assert (by_spark.success, by_spark.evaluated) == (by_pandas.success, by_pandas.evaluated)
        pandas_report, spark_report = report(by_pandas), report(by_spark)
        assert spark_report.keys() == pandas_report.keys(), day
        for rule, (count, elements, sample) in pandas_report.items():
            assert spark_report[rule][:2] == (count, elements), rule
            if not rule.startswith(SAMPLE_RULES_DIFFER):
                assert spark_report[rule][2] == sample, rule
    # The bad day failed on each of its five defects, in both engines.
    assert len(pandas_report) == 5, pandas_report
    # CSV: Spark's schema inference types the columns as pandas does; same verdicts.
    csv = reading.read_files(session, spec, [stream["root"] / f"loans_{BAD_DAY}.csv"])
    by_csv = spark_validation.validate(gx, spark_validation.standardize(csv, spec), spec, BAD_DAY)
    assert report(by_csv).keys() == pandas_report.keys()
    assert {r: v[:2] for r, v in report(by_csv).items()} == {
        r: v[:2] for r, v in pandas_report.items()
    }


@pytest.fixture(scope="module")
def trained(stream: dict[str, Any]) -> dict[str, Any]:
    """Both engines' offline stores filled with the good days; training rows of the first two
    days joined point-in-time by each; a model trained on the pandas rows and registered."""
    spec, session, root = stream["spec"], stream["session"], stream["root"]
    file_feast = FeastResource(repo_path=str(root / "feast_pandas"))
    spark_feast = FeastResource(repo_path=str(root / "feast_spark"))
    for day in DAYS:
        raw, _ = read_partition(spec, day)
        pandas_features.write_offline_partition(spec, file_feast, day, standardize(raw, spec))
        frame, _ = reading.read_partition(session, spec, day)
        offline.write_offline_partition(
            spark_validation.standardize(frame, spec), spec, spark_feast, day
        )
    file_feast.apply(pandas_features.feast_definitions(spec, file_feast))
    offline.spark_feast(spark_feast).apply(offline.feast_definitions(spec, spark_feast))
    window = DAYS[:2]
    labels = pd.concat(
        [
            pd.read_parquet(
                pandas_features.offline_folder(spec, file_feast) / f"{d}.parquet",
                columns=[spec.entity_key, spec.timestamp, spec.label],
            )
            for d in window
        ],
        ignore_index=True,
    )
    keys = [spec.timestamp, spec.entity_key]
    by_pandas = file_feast.historical_features(labels, pandas_features.feature_refs(spec))
    spark_labels = offline.label_rows(session, spec, spark_feast, window)
    # collected as the spark training_set collects them: through Parquet the executors write
    spark = stream["resource"]
    by_spark = spark.to_pandas(offline.historical_features(spark_feast, spark_labels, spec))
    assert not any(Path(spark.warehouse(), "_collected").iterdir())  # the scratch is deleted
    mlflow = MLflowResource()
    model = build_estimator(spec)
    model.fit(by_pandas[spec.feature_names], by_pandas[spec.label])
    with mlflow.start_run("spark-engine-parity"):
        info = log_sklearn_model(model, spec, by_pandas[spec.feature_names].head(20))
    version = str(info.registered_model_version)
    return {
        "file_feast": file_feast,
        "spark_feast": spark_feast,
        "pandas_rows": by_pandas.sort_values(keys).reset_index(drop=True),
        "spark_rows": by_spark.sort_values(keys).reset_index(drop=True),
        "version": version,
    }


def test_training_rows_same_point_in_time_join(stream: dict[str, Any], trained: dict) -> None:
    spec = stream["spec"]
    columns = [spec.entity_key, spec.timestamp, spec.label, *spec.feature_names]
    by_pandas, by_spark = trained["pandas_rows"][columns], trained["spark_rows"][columns]
    assert len(by_pandas) == 2 * ROWS
    by_spark[spec.timestamp] = pd.to_datetime(by_spark[spec.timestamp], utc=True)
    by_pandas[spec.timestamp] = pd.to_datetime(by_pandas[spec.timestamp], utc=True)
    by_spark[spec.label] = by_spark[spec.label].astype(str)
    by_pandas[spec.label] = by_pandas[spec.label].astype(str)
    pd.testing.assert_frame_equal(by_spark, by_pandas, check_dtype=False)


def test_predictions_equal_within_tolerance(stream: dict[str, Any], trained: dict) -> None:
    spec, session = stream["spec"], stream["session"]
    day = DAYS[-1]
    raw, _ = read_partition(spec, day)
    rows = standardize(raw, spec)
    model = load_registered_model(spec.model_name, trained["version"])
    by_pandas = pd.concat(
        [rows[[spec.entity_key, spec.timestamp]], score(model, rows[spec.feature_names], spec)],
        axis=1,
    )
    frame = spark_validation.standardize(reading.read_partition(session, spec, day)[0], spec)
    uri = f"models:/{spec.model_name}/{trained['version']}"
    by_spark = scoring.score_rows(frame, spec, uri).toPandas()
    keys = [spec.entity_key, spec.timestamp]
    by_spark[spec.timestamp] = pd.to_datetime(by_spark[spec.timestamp], utc=True)
    merged = by_pandas.merge(by_spark, on=keys, suffixes=("_pandas", "_spark"))
    assert len(merged) == len(by_pandas) == ROWS
    assert (merged["prediction_pandas"].astype(str) == merged["prediction_spark"]).all()
    np.testing.assert_allclose(merged["score_spark"], merged["score_pandas"], atol=1e-9)


def drift_verdicts(outcome: Any) -> dict[str, bool]:
    return {c.column: c.drifted for c in outcome.columns}


def test_drift_verdicts_agree(stream: dict[str, Any], trained: dict) -> None:
    """On each day the reference (the training rows and the model's scores) against the day:
    every row used (sample size above the day) gives the very same per-column verdicts; a
    sample drawn by Spark (200 of 300 rows) gives the same day-level verdict."""
    spec, session = stream["spec"], stream["session"]
    model = load_registered_model(spec.model_name, trained["version"])
    reference = trained["pandas_rows"][spec.feature_names].copy()
    reference[PREDICTION_COLUMN] = score(model, reference, spec)["score"].to_numpy()
    columns = [*spec.feature_names, PREDICTION_COLUMN]
    numeric = [f.name for f in spec.features if f.type == "numeric"] + [PREDICTION_COLUMN]
    categorical = [c for c in columns if c not in numeric]
    evidently, tests = EvidentlyResource(), drift_tests(spec)
    uri = f"models:/{spec.model_name}/{trained['version']}"
    share = spec.monitoring.drift.drift_share
    day_verdicts = {}
    for day in DAYS:
        rows = standardize(read_partition(spec, day)[0], spec)
        output = score(model, rows[spec.feature_names], spec)
        predictions = pd.concat([rows[[spec.entity_key, spec.timestamp]], output], axis=1)
        by_pandas = evidently.compare(
            reference, current_frame(spec, rows, predictions), numeric, categorical, tests, ROWS
        )
        frame = spark_validation.standardize(reading.read_partition(session, spec, day)[0], spec)
        current = sampling.current_rows(frame, scoring.score_rows(frame, spec, uri), spec)
        sample, total = sampling.sample_rows(current, ROWS)
        by_spark = evidently.compare(reference, sample, numeric, categorical, tests, ROWS)
        assert total == ROWS and len(sample) == ROWS
        assert drift_verdicts(by_spark) == drift_verdicts(by_pandas), (
            day,
            by_spark.columns,
            by_pandas.columns,
        )
        # A sample drawn by Spark (200 of 300 rows) against the whole reference.
        small, _ = sampling.sample_rows(current, 200, seed=1)
        assert 0 < len(small) <= 200 and not small.duplicated().any()
        by_sample = evidently.compare(reference, small, numeric, categorical, tests, len(reference))
        features = spec.feature_names
        pandas_detected = by_pandas.share(features) >= share
        assert (by_sample.share(features) >= share) == pandas_detected, (
            day,
            by_sample.columns,
            by_pandas.columns,
        )
        day_verdicts[day] = pandas_detected
    # The stream is what the demo says: stationary before DRIFT_START, drifted on it.
    assert day_verdicts == {DAYS[0]: False, DAYS[1]: False, DRIFT_START: True}, day_verdicts


def test_pyspark_stays_lazy() -> None:
    """`import mlops_assets` and the spark engine's modules load without starting Spark."""
    import subprocess
    import sys

    code = (
        "import sys, mlops_assets, mlops_resources.spark, mlops_assets.spark_engine.scoring, "
        "mlops_assets.spark_engine.offline, mlops_assets.spark_engine.sampling; "
        "print('pyspark' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
