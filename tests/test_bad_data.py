"""A bad partition: the blocking GX check fails naming each rule; nothing downstream runs."""

import pandas as pd
from dagster import DagsterInstance

from mlops_assets.keys import LIFECYCLE_JOB, asset_key, scoped_name
from mlops_assets.pipeline import build_definitions
from mlops_resources.mlflow_tracking import MLflowResource


def test_bad_partition_is_stopped_by_the_blocking_check(lifecycle):
    spec = lifecycle["spec"]
    day = lifecycle["extra_days"][0].isoformat()
    source = lifecycle["home"] / "demo_data" / f"loans_{day}.parquet"
    df = pd.read_parquet(source)
    df.loc[0:4, "income"] = None  # nulls
    df["credit_score"] = df["credit_score"].astype(str)  # wrong type
    df.loc[[0, 1], "credit_score"] = "excellent"
    df.loc[5, "debt_to_income"] = 5.0  # out of bounds (max 2)
    df = pd.concat([df, df.iloc[[7]]], ignore_index=True)  # duplicated entity + timestamp
    df.to_parquet(source, index=False)

    champion_before = MLflowResource().champion(spec.model_name)
    instance = DagsterInstance.get()
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
    result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)

    assert not result.success
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "great_expectations_suite"
    ]
    assert not evaluation.passed
    failed = {f["rule"]: f for f in evaluation.metadata["failed_expectations"].value}
    assert failed["expect_column_values_to_not_be_null(income)"]["unexpected_count"] == 5
    assert "expect_column_values_to_be_in_type_list(credit_score)" in failed
    assert (
        "excellent"
        in failed["expect_column_values_to_be_in_type_list(credit_score)"]["sample_bad_values"]
    )
    between = failed["expect_column_values_to_be_between(debt_to_income)"]
    assert between["unexpected_count"] == 1 and between["sample_bad_values"] == ["5.0"]
    assert (
        failed["expect_compound_columns_to_be_unique(customer_id,event_timestamp)"][
            "unexpected_count"
        ]
        == 2
    )
    assert (
        str(source.parent)
        in evaluation.metadata["source"].value.replace("${MLOPS_HOME}", str(lifecycle["home"]))
        or "loans_{date}" in evaluation.metadata["source"].value
    )

    materialized = {
        e.event_specific_data.materialization.asset_key
        for e in result.get_asset_materialization_events()
    }
    assert materialized == {asset_key(spec, "raw_data"), asset_key(spec, "validated_data")}
    for downstream in ("features", "training_set", "candidate_model", "batch_predictions"):
        assert day not in instance.get_materialized_partitions(asset_key(spec, downstream))
    assert not (lifecycle["home"] / "feast" / "offline" / spec.name / f"{day}.parquet").exists()
    assert MLflowResource().champion(spec.model_name) == champion_before


def test_numbers_become_the_text_pandas_string_dtype_gives_nulls_kept():
    """standardize's text conversion (class labels, keys given as numbers): converted once per
    distinct value, the same text as pandas' string dtype, nulls still null (so the not-null
    rule still sees them)."""
    import numpy as np

    from mlops_assets.validation import _as_text

    columns = [
        pd.Series([1, 0, 1, 5, -3, 2**62]),
        pd.Series(np.array([1, 2, 255], dtype=np.uint8)),
        pd.Series([True, False, True]),
        pd.Series(pd.array([1, None, 3], dtype="Int64")),
        pd.Series(pd.array([True, None], dtype="boolean")),
        pd.Series([1.0, np.nan, -0.0, 0.0, 1e16]),  # floats: pandas' conversion, value by value
        pd.Series(["a", None, 3], dtype=object),
    ]
    for values in columns:
        expected = values.astype("string").astype(object).where(values.notna())
        converted = _as_text(values)
        pd.testing.assert_series_equal(converted, expected)
        assert converted.isna().sum() == values.isna().sum()
