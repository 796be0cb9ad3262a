"""The bundled demo dataset: loan applications with a default label, one Parquet file a day.

Deterministic: each day is generated from (seed, day) alone. From DRIFT_START the applicant
population shifts (lower incomes, higher debt-to-income, more business loans) and the label
relationship changes (credit score matters less, debt-to-income more), so monitoring has a real
change to catch.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_resources.storage import mlops_home

DEMO_START = date(2024, 1, 1)
DEMO_DAYS = 75
DRIFT_START = date(2024, 2, 26)
ROWS_PER_DAY = 2000
CUSTOMERS = 20_000
SEED = 7

PURPOSES = ["home", "car", "education", "business", "debt_consolidation"]
OWNERSHIP = ["rent", "own", "mortgage"]
REGIONS = ["north", "south", "east", "west"]


def demo_data_dir() -> Path:
    return mlops_home() / "demo_data"


def _customers(seed: int) -> pd.DataFrame:
    """Stable customer attributes shared by all days."""
    rng = np.random.default_rng([seed, 0])
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:06d}" for i in range(CUSTOMERS)],
            "age": rng.integers(21, 75, CUSTOMERS).astype(float),
            "region": rng.choice(REGIONS, CUSTOMERS),
            "home_ownership": rng.choice(OWNERSHIP, CUSTOMERS, p=[0.45, 0.2, 0.35]),
            "base_income": rng.lognormal(mean=10.9, sigma=0.45, size=CUSTOMERS),
        }
    )


def generate_day(day: date, rows: int = ROWS_PER_DAY, seed: int = SEED) -> pd.DataFrame:
    """One day of loan applications (UTC timestamps inside the day)."""
    rng = np.random.default_rng([seed, day.toordinal()])
    drifted = day >= DRIFT_START
    people = (
        _customers(seed).sample(n=rows, random_state=rng.integers(2**31)).reset_index(drop=True)
    )

    income = people["base_income"].to_numpy() * rng.normal(1.0, 0.05, rows)
    if drifted:
        income *= 0.8
    purpose_p = [0.2, 0.25, 0.15, 0.1, 0.3] if not drifted else [0.1, 0.15, 0.1, 0.4, 0.25]
    purpose = rng.choice(PURPOSES, rows, p=purpose_p)
    credit_score = np.clip(rng.normal(680 if not drifted else 650, 60, rows), 300, 850).round()
    employment_years = np.clip(rng.gamma(2.0, 3.0, rows), 0, 50).round(1)
    loan_amount = np.clip(rng.lognormal(9.6, 0.6, rows), 500, 100_000).round(-1)
    dti = np.clip(rng.beta(2.5, 6.0, rows) + (0.12 if drifted else 0.0), 0, 2).round(3)

    credit_effect = -0.006 if drifted else -0.02
    dti_effect = 9.0 if drifted else 4.0
    logit = (
        -1.6
        + credit_effect * (credit_score - 680)
        + dti_effect * (dti - 0.3)
        + 0.5 * (loan_amount / income - 0.3)
        - 0.05 * employment_years
        + np.where(purpose == "business", 0.6, 0.0)
        + np.where(people["home_ownership"] == "own", -0.4, 0.0)
    )
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)

    seconds = np.sort(rng.integers(0, 86_400, rows))
    start = pd.Timestamp(day, tz="UTC")
    return pd.DataFrame(
        {
            "customer_id": people["customer_id"],
            "event_timestamp": start + pd.to_timedelta(seconds, unit="s"),
            "income": income.round(2),
            "loan_amount": loan_amount,
            "credit_score": credit_score,
            "debt_to_income": dti,
            "employment_years": employment_years,
            "age": people["age"],
            "loan_purpose": purpose,
            "home_ownership": people["home_ownership"],
            "region": people["region"],
            "defaulted": defaulted,
        }
    )


def write_demo_data(
    target: Path | None = None,
    start: date = DEMO_START,
    days: int = DEMO_DAYS,
    rows_per_day: int = ROWS_PER_DAY,
    overwrite: bool = False,
) -> list[Path]:
    """Write one Parquet file a day (`loans_YYYY-MM-DD.parquet`); existing files are kept."""
    target = target or demo_data_dir()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        path = target / f"loans_{day.isoformat()}.parquet"
        if overwrite or not path.exists():
            tmp = path.with_suffix(".tmp")
            generate_day(day, rows_per_day).to_parquet(tmp, index=False)
            tmp.replace(path)
        written.append(path)
    return written
