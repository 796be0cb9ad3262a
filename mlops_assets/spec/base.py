"""What every spec section shares: the strict base model, the task and its metrics, the
error type and the path variables."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

DEMO_SPEC_PATH = Path(__file__).resolve().parents[1] / "demo_spec.yaml"

# Metrics the trainer reports, with their direction. The gate only accepts these names.
METRICS_BY_TASK: dict[str, dict[str, bool]] = {
    "binary_classification": {
        "roc_auc": True,
        "accuracy": True,
        "f1": True,
        "log_loss": False,
        "brier": False,
    },
    "multiclass_classification": {"accuracy": True, "f1_macro": True, "log_loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True},
}


# The values each metric can take; a threshold outside them could never pass.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(["roc_auc", "accuracy", "f1", "f1_macro", "brier"], (0.0, 1.0)),
    **dict.fromkeys(["log_loss", "rmse", "mae"], (0.0, float("inf"))),
    "r2": (float("-inf"), 1.0),
}


def metric_gain(higher_is_better: bool, value: float, baseline: float) -> float:
    """How much better `value` is than `baseline` in the metric's better direction."""
    return value - baseline if higher_is_better else baseline - value


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class SpecError(ValueError):
    """A pipeline spec that cannot be used; the message names the file and the offending key."""


class Task(StrEnum):
    binary_classification = "binary_classification"
    multiclass_classification = "multiclass_classification"
    regression = "regression"


class StrictModel(BaseModel):
    """Every spec section: unknown keys are refused and values are not coerced (`"yes"` is not
    a bool, `"3"` or `3.0` not an int; YAML's own types and an int for a float are accepted).
    NaN and infinity are refused. Enum and date fields also take their text form
    (`Field(strict=False)`), as YAML and the recorded JSON spec write them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# `$NAME` or `${NAME}`, as os.path.expandvars reads them.
PATH_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)
HOME_VARIABLE = "MLOPS_HOME"


def path_variables(path: str) -> list[str]:
    """The environment variables `path` refers to, in order."""
    return [match[1].strip("{}") for match in PATH_VARIABLE.finditer(path)]
