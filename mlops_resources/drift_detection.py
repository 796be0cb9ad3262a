"""Evidently: data and prediction drift between a reference and a current dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

from mlops_resources.storage import disable_telemetry

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: Evidently's method, threshold, score and verdict."""

    column: str
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class DriftOutcome:
    """What one Evidently drift report found, plus its rendered HTML."""

    columns: list[ColumnDrift]
    reference_rows: int
    current_rows: int
    sampled: bool
    html: str = field(repr=False)

    def drifted(self, columns: list[str]) -> list[ColumnDrift]:
        """The drifted tests among `columns`."""
        return [c for c in self.columns if c.column in columns and c.drifted]

    def share(self, columns: list[str]) -> float:
        """Share of `columns` whose test flagged drift."""
        return len(self.drifted(columns)) / len(columns) if columns else 0.0


@dataclass(frozen=True)
class DriftTest:
    method: str
    threshold: float | None = None


class EvidentlyResource(ConfigurableResource):
    """Runs Evidently 0.7 DataDriftPreset reports; large inputs are sampled (seeded)."""

    seed: int = Field(default=0, description="Seed for sampling large inputs.")

    def compare(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        numeric: list[str],
        categorical: list[str],
        tests: dict[str, DriftTest],
        sample_size: int,
    ) -> DriftOutcome:
        """Test every column of `numeric` + `categorical` with its method from `tests`; each
        side is sampled down to `sample_size` rows (seeded) when larger."""
        disable_telemetry()
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        columns = [*numeric, *categorical]
        missing = sorted(set(columns) - set(tests))
        if missing:
            raise ValueError(f"no drift method for columns {missing}")
        ref, cur = (
            df[columns].sample(n=sample_size, random_state=self.seed)
            if len(df) > sample_size
            else df[columns]
            for df in (reference, current)
        )
        sampled = len(ref) < len(reference) or len(cur) < len(current)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        preset = DataDriftPreset(
            columns=columns,
            per_column_method={c: tests[c].method for c in columns},
            per_column_threshold={
                c: tests[c].threshold for c in columns if tests[c].threshold is not None
            },
        )
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
        result = snapshot.dict()
        scores = {m["id"]: m["value"] for m in result["metrics"]}
        found = []
        for test in result["tests"]:
            params = test["metric_config"]["params"]
            if not params["type"].endswith("ValueDrift"):
                continue
            found.append(
                ColumnDrift(
                    column=params["column"],
                    method=params["method"],
                    threshold=float(params["threshold"]),
                    score=float(scores[test["metric_config"]["metric_id"]]),
                    drifted=test["status"] == "FAIL",
                )
            )
        return DriftOutcome(
            columns=found,
            reference_rows=len(ref),
            current_rows=len(cur),
            sampled=sampled,
            html=snapshot.get_html_str(as_iframe=False),
        )
