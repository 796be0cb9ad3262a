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

from mlops_assets.cli import summarize_run
from mlops_assets.keys import LIFECYCLE_JOB, asset_key, base_name, scoped_name, step_key
from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import DEMO_SPEC_PATH, PipelineSpec, SpecError, load_spec
from tests.conftest import run_cli
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
    check: Callable[[ExecuteInProcessResult], None] | None = None


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


HUGE = "z" * 50_000


def samples_are_bounded(result: ExecuteInProcessResult) -> None:
    """A 50,000-character value is cut to 200 characters in the check's metadata."""
    [evaluation] = [e for e in result.get_asset_check_evaluations() if not e.passed]
    stored = json.dumps({k: str(v.value) for k, v in evaluation.metadata.items()})
    assert len(stored) < 5_000
    assert "z" * 201 not in stored and "z" * 201 not in (evaluation.description or "")


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
        "huge_category_value",
        parquet(assign("region", [2, 3, 4], HUGE)),
        GX_CHECK,
        ["expect_column_values_to_be_in_set(region)", "z" * 200 + "... (+49800 chars)"],
        check=samples_are_bounded,
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
    """The first failed blocking check, else the first failed step (by its asset's name)."""
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    failed_steps = [base_name(e.step_key) for e in result.all_events if e.is_step_failure]
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

    job = build_definitions(spec).resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
    result = job.execute_in_process(
        partition_key=day.isoformat(), instance=DagsterInstance.get(), raise_on_error=False
    )

    assert not result.success
    text = error_text(result)
    assert stopping_point(result) == case.stopped_by, text
    for expected in [str(tmp_path), *case.says]:
        assert expected.replace("{day}", day.isoformat()) in text, text
    materialized = {
        e.event_specific_data.materialization.asset_key.path[-1]
        for e in result.get_asset_materialization_events()
    }
    assert not materialized & DOWNSTREAM
    assert state.fingerprint() == before
    if case.check is not None:
        case.check(result)


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
    (
        "threshold_below_range",
        {"gate": {"value_thresholds": {"roc_auc": {"min": -5}}}},
        ["gate.value_thresholds.roc_auc", "-5", "at least 0", "never fail"],
    ),
    (
        "change_threshold_below_range",
        {"gate": {"change_thresholds": {"roc_auc": {"min_absolute_change": -5}}}},
        ["gate.change_thresholds.roc_auc", "-5", "never fail"],
    ),
    (
        "nan_threshold",
        {"gate": {"value_thresholds": {"roc_auc": {"min": float("nan")}}}},
        ["gate.value_thresholds.roc_auc.min", "finite number"],
    ),
    (
        "infinite_threshold",
        {"gate": {"value_thresholds": {"log_loss": {"max": float("inf")}}}},
        ["gate.value_thresholds.log_loss.max", "finite number"],
    ),
    ("text_for_bool", {"allow_extra_columns": "yes"}, ["allow_extra_columns", "valid boolean"]),
    ("text_for_int", {"feature_ttl_days": "90"}, ["feature_ttl_days", "valid integer"]),
    (
        "float_for_int",
        {"monitoring": {"retrain_cooldown_days": 2.0}},
        ["monitoring.retrain_cooldown_days", "valid integer"],
    ),
    (
        "unlisted_variable_in_source_path",
        {"source": {"path": "$MLOPS_TEST_TOKEN/loans_{date}.parquet"}},
        ["source.path", "$MLOPS_TEST_TOKEN", "source.path_variables"],
    ),
]


@pytest.mark.parametrize(("case", "overrides", "says"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_naming_file_key_and_rule(in_trained, tmp_path, case, overrides, says):
    path = in_trained.write_spec(tmp_path / f"{case}.yaml", **overrides)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    for expected in [str(path), *says]:
        assert expected in str(error.value)


def cli_refuses(path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> str:
    """`python -m mlops_assets demo --config path` exits 2 before running anything; returns
    what it printed."""
    monkeypatch.setenv("MLOPS_CONFIG", str(path))  # the CLI sets it; restored after the test
    runs = DagsterInstance.get().get_runs_count()
    code, out = run_cli("demo", "--config", str(path))
    err = capsys.readouterr().err
    assert code == 2, out + err
    assert "Traceback" not in err
    assert DagsterInstance.get().get_runs_count() == runs
    return err


def spec_text_with_gate(state: TrainedState, gate: str, **overrides: object) -> tuple[str, int]:
    """This state's spec as YAML text that ends with the `gate` block written by hand, and the
    line number of the block's first line."""
    raw = {**yaml.safe_load(state.spec_path.read_text()), **overrides}
    text = yaml.safe_dump({k: v for k, v in raw.items() if k != "gate"}, allow_unicode=True)
    return text + gate, text.count("\n") + 1


def duplicate_top_level_gate(state: TrainedState) -> tuple[str, list[str]]:
    text, line = spec_text_with_gate(
        state, "gate:\n  value_thresholds: {roc_auc: {min: 0.9}}\ngate: {}\n"
    )
    return text, [f"line {line + 2}", "duplicate key gate", f"first at line {line}"]


def duplicate_nested_key(state: TrainedState) -> tuple[str, list[str]]:
    gate = "gate:\n  value_thresholds:\n    roc_auc: {min: 0.9}\n    roc_auc: {min: 0.0}\n"
    text, line = spec_text_with_gate(state, gate)
    return text, [
        f"line {line + 3}",
        "duplicate key gate.value_thresholds.roc_auc",
        f"first at line {line + 2}",
    ]


def not_utf8(state: TrainedState) -> tuple[bytes, list[str]]:
    text, _ = spec_text_with_gate(state, "gate: {}\n", description="Prêts à risque")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("description"))
    return text.encode("latin-1"), [f"line {line}", "not UTF-8", "0xea", "save the file as UTF-8"]


@pytest.mark.parametrize("make", [duplicate_top_level_gate, duplicate_nested_key, not_utf8])
def test_malformed_spec_file_is_refused_by_the_cli(in_trained, tmp_path, capsys, monkeypatch, make):
    content, says = make(in_trained)
    path = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    err = cli_refuses(path, capsys, monkeypatch)
    for expected in [str(path), *says]:
        assert expected in err, err


PARAM_CASES = [
    (
        "misspelt_param",
        {"params": {"max_iterr": 150}},
        [
            "model.params.max_iterr",
            "not a parameter of HistGradientBoostingClassifier",
            "did you mean 'max_iter'",
            "valid: [",
            "'l2_regularization'",
        ],
    ),
    (
        "invalid_param_value",
        {"params": {"max_iter": "many"}},
        ["model.params", "'max_iter' parameter", "Got 'many'"],
    ),
    (
        "misspelt_linear_param",
        {"kind": "linear", "params": {"c": 0.5}},
        ["model.params.c", "LogisticRegression", "did you mean 'C'"],
    ),
    (
        "torch_mlp_with_params",
        {"kind": "torch_mlp", "params": {"hidden": [8]}},
        ["model.params", "torch_mlp takes no params", "torch_executor", "'hidden_sizes'"],
    ),
]


@pytest.mark.parametrize(("case", "model", "says"), PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_bad_model_params_are_refused_before_anything_runs(
    in_trained, tmp_path, capsys, monkeypatch, case, model, says
):
    state = in_trained
    before = state.fingerprint()
    path = state.write_spec(
        tmp_path / "spec.yaml", model={**state.spec.model.model_dump(), **model}
    )
    load_spec(path)  # the spec itself loads: the estimator is checked by the CLI
    err = cli_refuses(path, capsys, monkeypatch)
    for expected in [str(path), *says]:
        assert expected in err, err
    assert state.fingerprint() == before


def run_lifecycle(spec: PipelineSpec, day: str, *assets: str) -> ExecuteInProcessResult:
    """The `lifecycle` job for `day` on the trained state, only `assets`, failures returned."""
    return (
        build_definitions(spec)
        .resolve_job_def(scoped_name(spec, LIFECYCLE_JOB))
        .execute_in_process(
            partition_key=day,
            instance=DagsterInstance.get(),
            asset_selection=[asset_key(spec, a) for a in assets],
            raise_on_error=False,
        )
    )


def test_failed_step_shows_the_root_cause_not_the_retry(in_trained, tmp_path):
    """A misspelt estimator parameter that reaches training (a spec loaded by definitions.py is
    not checked against scikit-learn): after RetryPolicy's three attempts Dagster's failure says
    only "Exceeded max_retries of 2"; the CLI's summary shows the estimator's TypeError."""
    state = in_trained
    model = {**state.spec.model.model_dump(), "params": {"max_iterr": 150}}
    spec = load_spec(state.write_spec(tmp_path / "spec.yaml", model=model))
    day = state.trained_day.isoformat()
    result = run_lifecycle(spec, day, "candidate_model")
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.error.message.startswith("Exceeded max_retries of 2")

    summary = summarize_run(result, day, LIFECYCLE_JOB, 0.0)
    [step] = summary["failed_steps"]
    assert step["step"] == step_key(spec, "candidate_model")
    assert step["error"].startswith("TypeError: ")
    assert "unexpected keyword argument 'max_iterr'" in step["error"]


def mlflow_folder_is_a_file(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "mlflow").write_text("")


def mlflow_db_is_not_a_database(home: Path) -> None:
    (home / "mlflow").mkdir(parents=True)
    (home / "mlflow" / "mlflow.db").write_text("not a database")


@pytest.mark.parametrize(
    ("break_home", "says"),
    [
        # the mlflow resource fails to start: no STEP_FAILURE, only RESOURCE_INIT_FAILURE
        (mlflow_folder_is_a_file, "FileExistsError: [Errno 17] File exists"),
        # Dagster says "Error occurred while executing op loan_default__rollback_champion"
        (mlflow_db_is_not_a_database, "DatabaseError: file is not a database"),
    ],
)
def test_cli_rollback_failure_shows_the_root_cause(
    trained, tmp_path, capsys, monkeypatch, break_home, says
):
    home = tmp_path / "home"
    break_home(home)
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("MLOPS_CONFIG", str(trained.spec_path))

    code, _ = run_cli("rollback", "--config", str(trained.spec_path), "--reason", "test")

    err = capsys.readouterr().err
    assert code == 1
    [line] = [t for t in err.splitlines() if t.startswith("rollback failed: ")]
    assert line.startswith(f"rollback failed: {says}")
    assert "Error occurred while executing" not in line and "resource_fn" not in line


SENTINEL = "tok-3f9a-sentinel"


def test_only_listed_variables_are_expanded_in_the_source_path(
    in_trained, tmp_path, capsys, monkeypatch
):
    """A variable in source.path is expanded only when the spec lists it in
    source.path_variables (MLOPS_HOME always is): an unlisted one, e.g. a secret, is refused
    without its value reaching any output."""
    state = in_trained
    monkeypatch.setenv("MLOPS_TEST_TOKEN", SENTINEL)
    secret = state.write_spec(
        tmp_path / "secret.yaml", source={"path": "${MLOPS_TEST_TOKEN}/loans_{date}.parquet"}
    )
    err = cli_refuses(secret, capsys, monkeypatch)
    assert "$MLOPS_TEST_TOKEN" in err and "source.path_variables" in err
    assert SENTINEL not in err

    data = tmp_path / "data"
    data.mkdir()
    listed = {
        "path": "$MLOPS_TEST_DATA/loans_{date}.parquet",
        "path_variables": ["MLOPS_TEST_DATA"],
    }
    spec = load_spec(state.write_spec(tmp_path / "listed.yaml", source=listed))
    monkeypatch.setenv("MLOPS_TEST_DATA", str(data))
    assert spec.source_pattern() == f"{data}/loans_{{date}}.parquet"
    home = load_spec(state.write_spec(tmp_path / "home.yaml", source={"path": "$MLOPS_HOME/x"}))
    assert home.source_pattern() == f"{state.home.resolve()}/x"

    # listed but not set where the run reads the file: raw_data fails and names the variable
    monkeypatch.delenv("MLOPS_TEST_DATA")
    result = run_lifecycle(spec, state.next_day.isoformat(), "raw_data")
    assert not result.success
    [step] = summarize_run(result, "", LIFECYCLE_JOB, 0.0)["failed_steps"]
    assert step["step"] == step_key(spec, "raw_data")
    assert "$MLOPS_TEST_DATA (in source.path_variables) is not set" in step["error"]
