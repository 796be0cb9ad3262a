"""`Frame`: the DataFrame type of asset signatures, without importing pandas when the code
location loads (pandas and numpy would make loading definitions ~40% slower).

Type checkers see pandas.DataFrame; Dagster sees a DagsterType named DataFrame whose check
imports pandas only when a run checks a value. (Dagster's docs advise against DagsterType
objects in annotations because type checkers cannot read them; the TYPE_CHECKING branch is
what answers that.)
"""

from typing import TYPE_CHECKING, Any

from dagster import DagsterType, TypeCheck, TypeCheckContext


def is_data_frame(_: TypeCheckContext, value: Any) -> TypeCheck:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return TypeCheck(success=True)
    return TypeCheck(success=False, description=f"expected a pandas DataFrame, got {type(value)}")


if TYPE_CHECKING:
    from pandas import DataFrame as Frame
else:
    Frame = DagsterType(
        name="DataFrame",
        type_check_fn=is_data_frame,
        description="A pandas DataFrame.",
    )
