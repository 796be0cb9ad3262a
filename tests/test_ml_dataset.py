"""mlops_assets.ml.dataset: the training set's row order, its content hash (pandas' row
hashes, computed column by column), and the MLflow dataset input of candidate_model, whose
schema is inferred from a sample of rows and must be the schema MLflow infers from every row."""

import mlflow
import numpy as np
import pandas as pd

from mlops_assets.ml.dataset import (
    SCHEMA_SAMPLE_ROWS,
    content_hash,
    mlflow_dataset,
    ordered_rows,
    row_hashes,
)


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


def test_ordered_rows_is_the_pandas_sort() -> None:
    """Ties on the timestamp are broken by the key, as sort_values orders text (code points)."""
    df = training_like(20_000).sample(frac=1, random_state=5)
    df["event_timestamp"] = df["event_timestamp"].dt.floor("min")  # 60 rows a timestamp
    df.loc[df.index[:50], "customer_id"] = ["é", "Z", "a", "Ä", "b"] * 10 + df.index[:50].astype(
        str
    )
    expected = df.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)
    ordered = ordered_rows(df, "event_timestamp", "customer_id")
    pd.testing.assert_frame_equal(ordered, expected)


def test_row_hashes_are_pandas_row_hashes() -> None:
    df = training_like(30_000)  # distinct ids (hashed directly) and repeated text (factorized)
    df["region"] = pd.Categorical(np.where(df["flag"], "north", "south"))
    df.loc[::7, "income"] = np.nan
    for frame in (df, df.iloc[:0], df[["purpose"]]):
        expected = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        assert np.array_equal(row_hashes(frame), expected)
    changed = df.copy()
    changed.loc[12_345, "customer_id"] = "C99999999"
    assert content_hash(changed) != content_hash(df)
    assert content_hash(df.rename(columns={"term": "months"})) != content_hash(df)
