"""Label time and training windows (mlops_assets/ml/windows.py): pure logic on real specs."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_assets.ml.windows import (
    choose_window,
    holdout_mask,
    label_cutoff,
    labels_due,
    recency_weights,
)
from mlops_assets.spec import DEMO_SPEC_PATH, load_spec

D = date(2024, 3, 1)


def spec_with(tmp_path, policy: str, **window: object):
    raw = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    raw["source"]["path"] = str(DEMO_SPEC_PATH.parent / "x_{date}.parquet")
    raw["model"]["window"] = {"policy": policy, **window}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


def days(first: date, count: int) -> dict[date, int]:
    return {first + timedelta(days=i): 1000 for i in range(count)}


def test_labels_are_used_only_once_delivered(tmp_path):
    spec = spec_with(tmp_path, "sliding")  # demo: label_delay_days 1
    assert label_cutoff(spec, D, now=D) == D - timedelta(days=1)  # a run on day D
    assert label_cutoff(spec, D, now=D + timedelta(days=5)) == D  # a late re-run of D
    assert label_cutoff(spec, D, now=None) == D - timedelta(days=1)
    assert labels_due(spec, D, D + timedelta(days=1))
    assert not labels_due(spec, D, D)


def test_sliding_window_is_the_last_days_up_to_the_cutoff(tmp_path):
    spec = spec_with(tmp_path, "sliding")
    rows = days(D - timedelta(days=30), 31)
    window = choose_window(spec, D, rows, change_day=D - timedelta(days=2))
    assert window.policy == "sliding" and not window.weighted
    assert window.days == [D - timedelta(days=13 - i) for i in range(14)]


def test_since_change_starts_at_the_change_with_enough_rows(tmp_path):
    spec = spec_with(tmp_path, "since_change", min_rows=1500)
    rows = days(D - timedelta(days=30), 31)
    change = D - timedelta(days=1)
    window = choose_window(spec, D, rows, change_day=change)
    assert window.policy == "since_change" and window.days == [change, D]
    # one post-change day is 1,000 rows < min_rows: the whole window, recency-weighted
    fallback = choose_window(spec, D, rows, change_day=D)
    assert fallback.policy == "weighted" and fallback.weighted and len(fallback.days) == 14
    # nothing flagged, or a change older than the window: sliding
    assert choose_window(spec, D, rows, change_day=None).policy == "sliding"
    assert choose_window(spec, D, rows, D - timedelta(days=20)).policy == "sliding"


def test_recency_weights_halve_every_half_life():
    row_days = pd.Series(pd.to_datetime([D, D - timedelta(days=3), D - timedelta(days=6)]))
    assert np.allclose(recency_weights(row_days, D, 3.0), [1.0, 0.5, 0.25])


@pytest.mark.parametrize("count", [1, 3, 6, 14])
def test_holdout_is_the_newest_rows(tmp_path, count: int):
    """The newest holdout_days days, or the newest holdout_fraction of the rows when that is
    the smaller share (a window growing after a change keeps most of its rows to train on)."""
    spec = spec_with(tmp_path, "since_change", holdout_fraction=0.25)  # demo: holdout_days 3
    window = [D - timedelta(days=count - 1 - i) for i in range(count)]
    stamps = pd.Series(
        pd.to_datetime(
            [pd.Timestamp(d) + pd.Timedelta(minutes=m) for d in window for m in range(8)]
        )
    )
    mask = holdout_mask(spec, stamps.dt.date, stamps, window)
    assert mask.any() and not mask.all()
    assert stamps[mask].min() > stamps[~mask].max()  # strictly newer than every train row
    if 3 / count <= 0.25:
        assert set(stamps[mask].dt.date) == set(window[-3:])
    else:
        assert mask.sum() == 2 * count  # the newest quarter of the rows
