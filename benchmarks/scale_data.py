"""Loan-like days at any size for bench_scale.py: the demo's features and label relationship
(mlops_assets/demo_data.py), generated vectorized, with unique (customer_id, timestamp)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

PURPOSES = np.array(["home", "car", "education", "business", "debt_consolidation"])
OWNERSHIP = np.array(["rent", "own", "mortgage"])
REGIONS = np.array(["north", "south", "east", "west"])


def generate(day: date, rows: int, seed: int = 7) -> pd.DataFrame:
    """One day: customers drawn from 5x `rows` ids (some apply twice), timestamps spread
    over the day in distinct microseconds."""
    rng = np.random.default_rng([seed, day.toordinal()])
    ids = rng.integers(0, 5 * rows, rows)
    customer = pd.Series(ids).map("C{:08d}".format)
    step = 86_400_000_000 // rows
    micros = np.arange(rows, dtype=np.int64) * step + rng.integers(0, step, rows)
    income = rng.lognormal(10.9, 0.45, rows)
    purpose = PURPOSES[rng.choice(5, rows, p=[0.2, 0.25, 0.15, 0.1, 0.3])]
    ownership = OWNERSHIP[rng.choice(3, rows, p=[0.45, 0.2, 0.35])]
    credit = np.clip(rng.normal(680, 60, rows), 300, 850).round()
    years = np.clip(rng.gamma(2.0, 3.0, rows), 0, 50).round(1)
    loan = np.clip(rng.lognormal(9.6, 0.6, rows), 500, 100_000).round(-1)
    dti = np.clip(rng.beta(2.5, 6.0, rows), 0, 2).round(3)
    logit = (
        -1.6
        - 0.02 * (credit - 680)
        + 4.0 * (dti - 0.3)
        + 0.5 * (loan / income - 0.3)
        - 0.05 * years
        + np.where(purpose == "business", 0.6, 0.0)
        + np.where(ownership == "own", -0.4, 0.0)
    )
    return pd.DataFrame(
        {
            "customer_id": customer,
            "event_timestamp": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(micros, unit="us"),
            "income": income.round(2),
            "loan_amount": loan,
            "credit_score": credit,
            "debt_to_income": dti,
            "employment_years": years,
            "age": rng.integers(21, 75, rows).astype(float),
            "loan_purpose": purpose,
            "home_ownership": ownership,
            "region": REGIONS[rng.integers(0, 4, rows)],
            "defaulted": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def write_days(folder: Path, days: list[date], rows: int) -> list[Path]:
    """One `loans_<day>.parquet` per day."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for day in days:
        path = folder / f"loans_{day.isoformat()}.parquet"
        generate(day, rows).to_parquet(path, index=False)
        paths.append(path)
    return paths


def day_bytes(path: Path) -> int:
    """In-memory (pandas, deep) size of one day as the suite holds it after validation."""
    df = pd.read_parquet(path)
    df["defaulted"] = df["defaulted"].astype(str)
    return int(df.memory_usage(deep=True, index=False).sum())
