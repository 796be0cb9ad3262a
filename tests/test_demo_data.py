"""The demo dataset: deterministic, realistic, and drifting from DRIFT_START."""

from datetime import timedelta

import pandas as pd

from mlops_assets.demo_data import DRIFT_START, generate_day, write_demo_data


def test_days_are_deterministic_and_keys_unique():
    day = DRIFT_START - timedelta(days=10)
    a, b = generate_day(day, rows=500), generate_day(day, rows=500)
    pd.testing.assert_frame_equal(a, b)
    assert not a.duplicated(["customer_id", "event_timestamp"]).any()
    assert (a["event_timestamp"].dt.date == day).all()
    assert 0.05 < a["defaulted"].mean() < 0.4


def test_covariate_and_label_shift_from_drift_day():
    before = pd.concat(generate_day(DRIFT_START - timedelta(days=d), 2000) for d in (1, 2))
    after = pd.concat(generate_day(DRIFT_START + timedelta(days=d), 2000) for d in (0, 1))
    assert after["income"].median() < 0.9 * before["income"].median()
    assert after["debt_to_income"].mean() > before["debt_to_income"].mean() + 0.08
    assert (after["loan_purpose"] == "business").mean() > 2 * (
        before["loan_purpose"] == "business"
    ).mean()
    assert after["defaulted"].mean() > before["defaulted"].mean()


def test_write_demo_data_keeps_existing_files(tmp_path):
    files = write_demo_data(tmp_path, days=3, rows_per_day=50)
    assert [f.name for f in files] == [
        "loans_2024-01-01.parquet",
        "loans_2024-01-02.parquet",
        "loans_2024-01-03.parquet",
    ]
    stamp = files[0].stat().st_mtime_ns
    write_demo_data(tmp_path, days=3, rows_per_day=50)
    assert files[0].stat().st_mtime_ns == stamp
