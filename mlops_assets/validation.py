"""Validation stage: validated_data, gated by a blocking Great Expectations suite."""

from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    TableSchema,
    asset,
)

from mlops_assets.data import (
    day_bounds,
    partition_day,
    partitioned,
    source_files,
    table_schema,
)
from mlops_assets.frames import Frame
from mlops_assets.keys import asset_ins, asset_key
from mlops_assets.spec import PipelineSpec
from mlops_resources.validation import (
    ExpectationConfig,
    GreatExpectationsResource,
    ValidationOutcome,
)

if TYPE_CHECKING:
    import pandas as pd

GX_CHECK = "great_expectations_suite"
NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "int16", "int8", "Int64", "Float64"]


def _coerce_if_clean(values: "pd.Series", converted: "pd.Series") -> "pd.Series":
    """Use the converted column only if conversion lost no value; else keep the original so the
    type expectation fails and shows the offending values."""
    lost = converted.isna() & values.notna()
    return values if lost.any() else converted


def standardize(df: Frame, spec: PipelineSpec) -> Frame:
    """Apply the spec's types where values convert cleanly: UTC timestamps, float numerics,
    string keys, categoricals and class labels. Nothing is dropped or invented.

    The result is one copy of the frame, with each dtype's columns in one block: Great
    Expectations filters the whole frame by a column's null mask several times per expectation,
    and every such filter of a frame whose columns are spread over blocks re-merges them (a
    1,000,000-row day validated in 13.3 s as the converted frame, 6.5 s as this copy)."""
    import pandas as pd

    out = df.copy(deep=False)
    if spec.timestamp in out and not _is_utc_timestamp(out[spec.timestamp]):
        out[spec.timestamp] = _coerce_if_clean(
            out[spec.timestamp], pd.to_datetime(out[spec.timestamp], utc=True, errors="coerce")
        )
    text_columns = [spec.entity_key] + [f.name for f in spec.features if f.type == "categorical"]
    if spec.is_classification:
        text_columns.append(spec.label)
    for column in text_columns:
        if column in out and not _is_text(out[column]):
            out[column] = _as_text(out[column])
    numeric = [f.name for f in spec.features if f.type == "numeric"]
    if not spec.is_classification:
        numeric.append(spec.label)
    for column in numeric:
        if column in out and out[column].dtype != "float64":
            out[column] = _coerce_if_clean(
                out[column], pd.to_numeric(out[column], errors="coerce").astype("float64")
            )
    return out.copy()


def _as_text(values: "pd.Series") -> "pd.Series":
    """Values as Python str, nulls as NaN. Integers and bools are converted once per distinct
    value (a 0/1 label of 1,000,000 rows: 0.02 s against 0.17 s through pandas' string
    dtype, which gives the same text)."""
    import numpy as np
    import pandas as pd

    if values.dtype.kind not in "biu":  # floats: 0.0 and -0.0 are one value to factorize
        return values.astype("string").astype(object).where(values.notna())
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = pd.Series(uniques).astype("string").astype(object).tolist()
    lookup = np.array([*text, np.nan], dtype=object)  # code -1 (null): the last entry
    return pd.Series(lookup[codes], index=values.index, name=values.name)


def _is_utc_timestamp(values: "pd.Series") -> bool:
    import pandas as pd

    dtype = values.dtype
    return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"


def _is_text(values: "pd.Series") -> bool:
    """Object values that are all Python str (or missing): what the conversion would give."""
    import pandas as pd

    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    )


def build_expectations(spec: PipelineSpec, day: date) -> list[ExpectationConfig]:
    """The suite for one partition: rows, schema, types, nulls, bounds, categories, keys, and
    timestamps inside the day (daily partitions exist only for finished days, so this also
    refuses timestamps in the future)."""
    E = ExpectationConfig
    # with a label source (spec `labels:`) the label is not a column of these rows
    label = [spec.label] if spec.labels is None else []
    required = [spec.entity_key, spec.timestamp, *label, *spec.feature_names]
    start, _ = day_bounds(day)
    last_instant = start + timedelta(days=1) - timedelta(microseconds=1)
    suite = [
        E("expect_table_row_count_to_be_between", {"min_value": 1}),
        E(
            "expect_table_columns_to_match_set",
            {"column_set": required, "exact_match": not spec.allow_extra_columns},
        ),
        *(E("expect_column_to_exist", {"column": c}) for c in required),
        *(
            E("expect_column_values_to_not_be_null", {"column": c})
            for c in [spec.entity_key, spec.timestamp, *label]
        ),
        E(
            "expect_compound_columns_to_be_unique",
            {"column_list": [spec.entity_key, spec.timestamp]},
        ),
        E(
            "expect_column_values_to_be_between",
            {
                "column": spec.timestamp,
                "min_value": start.isoformat(),
                "max_value": last_instant.isoformat(),
            },
        ),
    ]
    if label and spec.classes is not None:
        suite.append(
            E(
                "expect_column_values_to_be_in_set",
                {"column": spec.label, "value_set": spec.classes},
            )
        )
    elif label and not spec.is_classification:
        suite.append(
            E(
                "expect_column_values_to_be_in_type_list",
                {"column": spec.label, "type_list": NUMERIC_TYPES},
            )
        )
    for feature in spec.features:
        if not feature.nullable:
            suite.append(E("expect_column_values_to_not_be_null", {"column": feature.name}))
        if feature.type == "numeric":
            suite.append(
                E(
                    "expect_column_values_to_be_in_type_list",
                    {"column": feature.name, "type_list": NUMERIC_TYPES},
                )
            )
            # Bounds also catch +/-inf; unbounded numerics still must be finite.
            low = feature.min if feature.min is not None else -1.7e308
            high = feature.max if feature.max is not None else 1.7e308
            suite.append(
                E(
                    "expect_column_values_to_be_between",
                    {"column": feature.name, "min_value": low, "max_value": high},
                )
            )
        elif feature.allowed_values is not None:
            suite.append(
                E(
                    "expect_column_values_to_be_in_set",
                    {"column": feature.name, "value_set": feature.allowed_values},
                )
            )
    suite.extend(E(e.type, dict(e.kwargs)) for e in spec.expectations)
    return suite


def check_result(outcome: ValidationOutcome, source: str) -> AssetCheckResult:
    """The blocking check's result; metadata lists each failed rule with counts and samples."""
    failed = [
        {
            "rule": f.rule(),
            "unexpected_count": f.unexpected_count,
            "element_count": f.element_count,
            "sample_bad_values": f.sample,
        }
        for f in outcome.failures
    ]
    rows = "\n".join(
        f"| `{f['rule']}` | {f['unexpected_count']} | {', '.join(f['sample_bad_values'])} |"
        for f in failed
    )
    summary = "| rule | unexpected | sample bad values |\n|---|---|---|\n" + rows
    return AssetCheckResult(
        check_name=GX_CHECK,
        passed=outcome.success,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{source}: {len(failed)} of {outcome.evaluated} expectations failed: "
            + "; ".join(f["rule"] for f in failed)
            if failed
            else f"all {outcome.evaluated} expectations passed"
        ),
        metadata={
            "source": source,
            "expectations_evaluated": outcome.evaluated,
            "expectations_failed": len(failed),
            "failed_expectations": MetadataValue.json(failed),
            "failures": MetadataValue.md(summary if failed else "none"),
        },
    )


def gx_check_spec(spec: PipelineSpec, description: str) -> AssetCheckSpec:
    """The blocking GX check on validated_data."""
    return AssetCheckSpec(
        GX_CHECK, asset=asset_key(spec, "validated_data"), blocking=True, description=description
    )


def check_extra_expectations(gx: GreatExpectationsResource, spec: PipelineSpec) -> None:
    """Refuse, naming the spec entry, any `expectations:` entry GX cannot build."""
    for index, extra in enumerate(spec.expectations):
        try:
            gx.build_expectation(ExpectationConfig(extra.type, dict(extra.kwargs)))
        except ValueError as exc:
            raise Failure(f"pipeline spec {spec.spec_path}: expectations.{index}: {exc}") from exc


def validated_outputs(
    context: AssetExecutionContext,
    spec: PipelineSpec,
    day: date,
    df: Any,
    outcome: ValidationOutcome,
    rows: int,
    schema: TableSchema,
    **metadata: Any,
) -> Iterator[Output[Any] | AssetCheckResult]:
    """validated_data's value (typed rows, pandas or Spark) and its GX check result. Its data
    version is Dagster's, from its code version and raw_data's content hash: the typed rows are
    a function of both, so hashing them again would add time and no information."""
    yield Output(
        df,
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": schema,
            "valid": outcome.success,
            **metadata,
        },
    )
    files = ", ".join(str(f) for f in source_files(spec, day))
    result = check_result(outcome, source=f"{files} [{day}]")
    if not outcome.success:
        context.log.error(f"validation failed for {day}: {result.description}")
    yield result


def build_validated_data(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **partitioned(spec, "validated_data"),
        ins=asset_ins(spec, "raw_data"),
        description="raw_data with the spec's types applied; the GX suite gates everything "
        "downstream (blocking check).",
        check_specs=[gx_check_spec(spec, "Great Expectations suite built from the pipeline spec.")],
        kinds={"pandas", "great_expectations"},
    )
    def validated_data(
        context: AssetExecutionContext, gx: GreatExpectationsResource, raw_data: Frame
    ):
        day = partition_day(context.partition_key)
        check_extra_expectations(gx, spec)
        df = standardize(raw_data, spec)
        outcome = gx.validate(df, f"{spec.name}_{day:%Y%m%d}", build_expectations(spec, day))
        yield from validated_outputs(context, spec, day, df, outcome, len(df), table_schema(df))

    return validated_data
