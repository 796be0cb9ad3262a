"""Each resource against the real library: Great Expectations, MLflow, Feast."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import MLflowResource, PromotionConflict
from mlops_resources.validation import ExpectationConfig, GreatExpectationsResource


def test_gx_reports_counts_and_samples_per_failed_rule():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "x": [1.0, None, 7.0, 9.0]})
    outcome = GreatExpectationsResource(sample_size=3).validate(
        df,
        "probe",
        [
            ExpectationConfig("expect_column_values_to_not_be_null", {"column": "x"}),
            ExpectationConfig(
                "expect_column_values_to_be_between",
                {"column": "x", "min_value": 0, "max_value": 5},
            ),
            ExpectationConfig("expect_column_values_to_be_unique", {"column": "id"}),
            ExpectationConfig("expect_column_to_exist", {"column": "missing"}),
            ExpectationConfig("expect_column_values_to_not_be_null", {"column": "missing"}),
        ],
    )
    assert not outcome.success and outcome.evaluated == 5
    failed = {f.rule(): f for f in outcome.failures}
    assert failed["expect_column_values_to_not_be_null(x)"].unexpected_count == 1
    assert failed["expect_column_values_to_be_between(x)"].sample == ["7.0", "9.0"]
    assert "expect_column_to_exist(missing)" in failed
    assert "error:" in failed["expect_column_values_to_not_be_null(missing)"].sample[0]
    assert "expect_column_values_to_be_unique(id)" not in failed


def test_gx_unknown_expectation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Great Expectations expectation 'expect_magic'"):
        GreatExpectationsResource().build_expectation(ExpectationConfig("expect_magic"))


def test_mlflow_embedded_store_and_compare_and_set_alias(home):
    import mlflow
    from sklearn.dummy import DummyClassifier

    resource = MLflowResource(experiment_name="resource-test")
    with resource.start_run("probe") as run:
        mlflow.sklearn.log_model(
            DummyClassifier().fit([[0], [1]], [0, 1]),
            name="model",
            registered_model_name="probe_model",
            serialization_format="skops",
        )
    assert resource.resolved_tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifact_uri = resource.client().get_run(run.info.run_id).info.artifact_uri
    assert artifact_uri.startswith((home / "mlflow" / "artifacts").as_uri())
    assert resource.champion("probe_model") is None
    resource.move_champion("probe_model", "1", expected=None)
    assert resource.champion("probe_model") == "1"
    with pytest.raises(PromotionConflict, match="moved from None to 1"):
        resource.move_champion("probe_model", "1", expected=None)


def test_feast_apply_materialize_and_read_back(home):
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    feast = FeastResource(project="probe")
    folder = feast.offline_data_dir / "probe"
    folder.mkdir(parents=True)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    pd.DataFrame(
        {
            "user": ["u1", "u2", "u1"],
            "ts": [start, start + timedelta(hours=1), start + timedelta(hours=2)],
            "score": [1.0, 2.0, 3.0],
        }
    ).to_parquet(folder / "day.parquet")
    user = Entity(name="user", join_keys=["user"], value_type=ValueType.STRING)
    view = FeatureView(
        name="probe_view",
        entities=[user],
        schema=[Field(name="score", dtype=Float64)],
        source=FileSource(path=str(folder), timestamp_field="ts"),
        ttl=timedelta(days=1),
    )
    feast.apply([user, view])
    feast.materialize(start, start + timedelta(days=1), ["probe_view"])
    online = feast.online_features([{"user": "u1"}, {"user": "u2"}], ["probe_view:score"])
    assert online["score"].tolist() == [3.0, 2.0]
    entity_df = pd.DataFrame({"user": ["u1"], "event_timestamp": [start + timedelta(hours=1)]})
    historical = feast.historical_features(entity_df, ["probe_view:score"])
    assert historical["score"].tolist() == [1.0]  # point in time: the later value is not seen
    assert (home / "feast" / "online.db").is_file() and (home / "feast" / "registry.db").is_file()
