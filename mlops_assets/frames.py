"""`Frame` and `ArrowTable`: the table types of asset signatures, without importing pandas or
pyarrow when the code location loads (pandas and numpy would make loading definitions ~40%
slower). The IO manager loads an `ArrowTable` input from Parquet without pandas.

Type checkers see pandas.DataFrame; Dagster sees a DagsterType named DataFrame whose check
imports pandas only when a run checks a value. (Dagster's docs advise against DagsterType
objects in annotations because type checkers cannot read them; the TYPE_CHECKING branch is
what answers that.)
"""

from typing import TYPE_CHECKING, Any

from dagster import DagsterType, TypeCheck, TypeCheckContext

from mlops_resources.io_manager import ARROW_TABLE_TYPE


def is_data_frame(_: TypeCheckContext, value: Any) -> TypeCheck:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return TypeCheck(success=True)
    return TypeCheck(success=False, description=f"expected a pandas DataFrame, got {type(value)}")


def is_arrow_table(_: TypeCheckContext, value: Any) -> TypeCheck:
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return TypeCheck(success=True)
    return TypeCheck(success=False, description=f"expected a pyarrow Table, got {type(value)}")


if TYPE_CHECKING:
    from pandas import DataFrame as Frame
    from pyarrow import Table as ArrowTable
else:
    ArrowTable = DagsterType(
        name=ARROW_TABLE_TYPE,
        type_check_fn=is_arrow_table,
        description="A pyarrow Table (read from Parquet without a pandas round trip).",
    )
    Frame = DagsterType(
        name="DataFrame",
        type_check_fn=is_data_frame,
        description="A pandas DataFrame.",
    )
