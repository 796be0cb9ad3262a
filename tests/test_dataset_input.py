"""The MLflow dataset input of candidate_model: its schema is inferred from a sample of rows,
and must be the schema MLflow infers from every row."""

import mlflow
import numpy as np
import pandas as pd

from mlops_assets.ml.dataset import SCHEMA_SAMPLE_ROWS, mlflow_dataset


def training_like(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:08d}" for i in range(rows)],
            "event_timestamp": pd.date_range("2024-01-01", periods=rows, freq="s", tz="UTC"),
            "income": rng.normal(5e4, 1e4, rows),
            "term": rng.integers(12, 60, rows),
            "purpose": rng.choice(["car", "home", None], rows),
            "flag": rng.random(rows) > 0.5,
            "defaulted": rng.choice(["0", "1"], rows),
        }
    )


def test_sampled_schema_is_the_full_schema() -> None:
    df = training_like(5 * SCHEMA_SAMPLE_ROWS + 7)
    sampled = mlflow_dataset(df, "loans_training_set", "defaulted", "abc123")
    full = mlflow.data.from_pandas(
        df, name="loans_training_set", targets="defaulted", digest="abc123"
    )
    assert sampled.schema == full.schema
    mine, theirs = sampled.to_dict(), full.to_dict()
    assert mine == theirs
    assert mine["digest"] == "abc123"
    assert '"num_rows": 50007' in mine["profile"]
