"""Bad input, one case at a time, through the real lifecycle job: each is stopped with an error
that names the file, the column and the rule; nothing downstream of the failed step runs; the
champion, the registered versions and the Feast stores are untouched.

The count of cases tried and caught is reported in docs/reliability.md.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult

from mlops_assets.pipeline import LIFECYCLE_JOB, build_definitions
from mlops_assets.spec import DEMO_SPEC_PATH, SpecError, load_spec
from tests.reliability.conftest import TrainedState

DOWNSTREAM = {"features", "training_set", "candidate_model", "model_promotion", "batch_predictions"}
GX_CHECK = "great_expectations_suite"


@dataclass(frozen=True)
class BadInput:
    """A bad source file for the next day: how to write it, and what the error must say."""

    id: str
    write: Callable[[pd.DataFrame, Path], None] | None
    stopped_by: str  # "raw_data" (the read fails) or GX_CHECK (the blocking check fails)
    says: list[str]
    fmt: str = "parquet"
    spec: dict = field(default_factory=dict)


def parquet(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame, Path], None]:
    return lambda df, path: change(df.copy()).to_parquet(path, index=False)


def csv(change: Callable[[pd.DataFrame], pd.DataFrame], **options) -> Callable:
    return lambda df, path: change(df.copy()).to_csv(path, index=False, **options)


def raw_bytes(make: Callable[[pd.DataFrame, Path], bytes]) -> Callable[[pd.DataFrame, Path], None]:
    return lambda df, path: path.write_bytes(make(df, path))


def assign(column: str, rows: slice | list[int], value: object) -> Callable:
    """Set `value` in some rows; a text value turns the whole column into text first."""

    def change(df: pd.DataFrame) -> pd.DataFrame:
        if isinstance(value, str):
            df[column] = df[column].astype(str)
        elif value is None:
            df[column] = df[column].astype(object)
        df.loc[df.index[rows], column] = value
        return df

    return change


def truncated_parquet(df: pd.DataFrame, path: Path) -> bytes:
    df.to_parquet(path, index=False)
    data = path.read_bytes()
    return data[: len(data) // 2]


def shift_timestamps(days: int) -> Callable:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df.index[:3], "event_timestamp"] += pd.Timedelta(days=days)
        return df

    return change


def stamped_in_future(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[df.index[:2], "event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=365)
    return df


CASES = [
    BadInput("missing_file", None, "raw_data", ["no source file matches", "loans_{day}"]),
    BadInput("empty_parquet_file", raw_bytes(lambda df, p: b""), "raw_data", ["cannot be read"]),
    BadInput("empty_csv_file", raw_bytes(lambda df, p: b""), "raw_data", ["cannot be read"], "csv"),
    BadInput(
        "header_only_csv",
        csv(lambda df: df.iloc[:0]),
        GX_CHECK,
        ["expect_table_row_count_to_be_between", "observed: 0"],
        "csv",
    ),
    BadInput(
        "zero_row_parquet",
        parquet(lambda df: df.iloc[:0]),
        GX_CHECK,
        ["expect_table_row_count_to_be_between"],
    ),
    BadInput("truncated_parquet", raw_bytes(truncated_parquet), "raw_data", ["cannot be read"]),
    BadInput(
        "text_named_parquet",
        raw_bytes(lambda df, p: df.to_csv(index=False).encode()),
        "raw_data",
        ["cannot be read as parquet"],
    ),
    BadInput(
        "csv_wrong_delimiter",
        csv(lambda df: df, sep=";"),
        GX_CHECK,
        ["expect_table_columns_to_match_set", "expect_column_to_exist(income)"],
        "csv",
    ),
    BadInput(
        "csv_wrong_encoding",
        csv(assign("loan_purpose", [0], "éducation"), encoding="latin-1"),
        "raw_data",
        ["cannot be read as csv", "utf-8"],
        "csv",
    ),
    BadInput(
        "missing_column",
        parquet(lambda df: df.drop(columns=["income"])),
        GX_CHECK,
        ["expect_column_to_exist(income)"],
    ),
    BadInput(
        "extra_column",
        parquet(lambda df: df.assign(notes="x")),
        GX_CHECK,
        ["expect_table_columns_to_match_set", "notes"],
    ),
    BadInput(
        "wrong_dtype",
        parquet(assign("credit_score", [0, 1], "excellent")),
        GX_CHECK,
        ["expect_column_values_to_be_in_type_list(credit_score)", "excellent"],
    ),
    BadInput(
        "timestamp_not_a_date",
        parquet(assign("event_timestamp", [0], "yesterday")),
        GX_CHECK,
        ["expect_column_values_to_be_between(event_timestamp)", "of the same type"],
    ),
    BadInput(
        "all_null_column",
        parquet(assign("income", slice(None), None)),
        GX_CHECK,
        ["expect_column_values_to_not_be_null(income)"],
    ),
    BadInput(
        "nan_numeric",
        parquet(assign("debt_to_income", [3, 4], np.nan)),
        GX_CHECK,
        ["expect_column_values_to_not_be_null(debt_to_income)"],
    ),
    BadInput(
        "inf_numeric",
        parquet(assign("loan_amount", [2], np.inf)),
        GX_CHECK,
        ["expect_column_values_to_be_between(loan_amount)", "inf"],
    ),
    BadInput(
        "out_of_bounds",
        parquet(assign("age", [5], 150.0)),
        GX_CHECK,
        ["expect_column_values_to_be_between(age)", "150.0"],
    ),
    BadInput(
        "unseen_category",
        parquet(assign("region", [6], "mars")),
        GX_CHECK,
        ["expect_column_values_to_be_in_set(region)", "mars"],
    ),
    BadInput(
        "null_entity_key",
        parquet(assign("customer_id", [1], None)),
        GX_CHECK,
        ["expect_column_values_to_not_be_null(customer_id)"],
    ),
    BadInput(
        "duplicated_entity_timestamp",
        parquet(lambda df: pd.concat([df, df.iloc[[7]]], ignore_index=True)),
        GX_CHECK,
        ["expect_compound_columns_to_be_unique(customer_id,event_timestamp)"],
    ),
    BadInput(
        "timestamp_outside_partition",
        parquet(shift_timestamps(2)),
        GX_CHECK,
        ["expect_column_values_to_be_between(event_timestamp)"],
    ),
    BadInput(
        "timestamp_in_future",
        parquet(stamped_in_future),
        GX_CHECK,
        ["expect_column_values_to_be_between(event_timestamp)"],
    ),
    BadInput(
        "label_null",
        parquet(assign("defaulted", [0, 1], None)),
        GX_CHECK,
        ["expect_column_values_to_not_be_null(defaulted)"],
    ),
    BadInput(
        "label_column_missing",
        parquet(lambda df: df.drop(columns=["defaulted"])),
        GX_CHECK,
        ["expect_column_to_exist(defaulted)"],
    ),
    BadInput(
        "label_new_class",
        parquet(assign("defaulted", [0], 2)),
        GX_CHECK,
        ["expect_column_values_to_be_in_set(defaulted)", '"2"'],
    ),
    BadInput(
        "unknown_extra_expectation",
        parquet(lambda df: df),
        "validated_data",
        ["unknown Great Expectations expectation 'expect_column_values_to_be_purple'"],
        spec={"expectations": [{"type": "expect_column_values_to_be_purple", "kwargs": {}}]},
    ),
]


def error_text(result: ExecuteInProcessResult) -> str:
    """Everything a person sees about the failure: step errors and failed check evaluations."""
    parts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            parts.append(f"[{event.step_key}] {data.error.to_string() if data.error else ''}")
            if data.user_failure_data:
                parts.append(data.user_failure_data.description or "")
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            parts.append(f"[{evaluation.check_name}] {evaluation.description}")
            failed = evaluation.metadata.get("failed_expectations")
            parts.append(json.dumps(failed.value if failed else None))
    return "\n".join(parts)


def stopping_point(result: ExecuteInProcessResult) -> str:
    """The first failed blocking check, else the first failed step."""
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    failed_steps = [e.step_key for e in result.all_events if e.is_step_failure]
    return (failed_checks or failed_steps or ["nothing"])[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_stopped_before_anything_downstream(in_trained: TrainedState, tmp_path, case):
    state = in_trained
    good = pd.read_parquet(state.home / "demo_data" / f"loans_{state.next_day}.parquet")
    day = state.next_day
    source = tmp_path / f"loans_{{date}}.{case.fmt}"
    if case.write is not None:
        case.write(good, Path(str(source).replace("{date}", day.isoformat())))
    overrides = {"source": {"path": str(source)}, **case.spec}
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", **overrides))
    before = state.fingerprint()

    job = build_definitions(spec).resolve_job_def(LIFECYCLE_JOB)
    result = job.execute_in_process(
        partition_key=day.isoformat(), instance=DagsterInstance.get(), raise_on_error=False
    )

    assert not result.success
    text = error_text(result)
    assert stopping_point(result) == case.stopped_by, text
    for expected in [str(tmp_path), *case.says]:
        assert expected.replace("{day}", day.isoformat()) in text, text
    materialized = {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    assert not materialized & DOWNSTREAM
    assert state.fingerprint() == before


def with_feature(name: str, **changes: object) -> list[dict]:
    """The demo spec's features with one feature's keys changed."""
    features = yaml.safe_load(DEMO_SPEC_PATH.read_text())["features"]
    return [{**f, **changes} if f["name"] == name else f for f in features]


SPEC_CASES = [
    ("typo_top_level_key", {"feautres": []}, ["feautres", "unknown key"]),
    (
        "unknown_nested_key",
        {"model": {"kind": "linear", "windowdays": 3}},
        ["model.windowdays", "unknown key"],
    ),
    (
        "impossible_value_threshold",
        {"gate": {"value_thresholds": {"roc_auc": {"min": 1.5}}}},
        ["gate.value_thresholds.roc_auc", "1.5", "at most 1"],
    ),
    (
        "negative_loss_threshold",
        {"gate": {"value_thresholds": {"log_loss": {"max": -0.1}}}},
        ["gate.value_thresholds.log_loss", "-0.1", "at least 0"],
    ),
    (
        "impossible_change_threshold",
        {"gate": {"change_thresholds": {"accuracy": {"min_absolute_change": 2.0}}}},
        ["gate.change_thresholds.accuracy", "2.0"],
    ),
    (
        "threshold_wrong_direction",
        {"gate": {"value_thresholds": {"roc_auc": {"max": 0.9}}}},
        ["gate.value_thresholds.roc_auc", "give min, not max"],
    ),
    (
        "unknown_metric",
        {"gate": {"value_thresholds": {"r2": {"min": 0.1}}}},
        ["unknown metric", "r2"],
    ),
    (
        "feature_min_above_max",
        {"features": with_feature("age", min=90, max=18)},
        ["features.5", "min 90.0 is above max 18.0"],
    ),
    (
        "empty_allowed_values",
        {"features": with_feature("region", allowed_values=[])},
        ["features.8.allowed_values", "at least 1"],
    ),
    (
        "holdout_not_below_window",
        {"model": {"training_window_days": 3, "holdout_days": 3}},
        ["model", "holdout_days (3) must be smaller than training_window_days (3)"],
    ),
    ("binary_with_three_classes", {"classes": ["0", "1", "2"]}, ["exactly 2"]),
    ("name_with_path_traversal", {"name": "../../etc"}, ["name", "should match pattern"]),
    ("empty_csv_delimiter", {"source": {"path": "x.csv", "csv_delimiter": ""}}, ["csv_delimiter"]),
]


@pytest.mark.parametrize(("case", "overrides", "says"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_naming_file_key_and_rule(in_trained, tmp_path, case, overrides, says):
    path = in_trained.write_spec(tmp_path / f"{case}.yaml", **overrides)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    for expected in [str(path), *says]:
        assert expected in str(error.value)
