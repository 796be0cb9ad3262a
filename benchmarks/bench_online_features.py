"""Online features and batch scoring.

1. Single-entity online reads: `FeastResource.online_features` vs calling Feast's
   `FeatureStore.get_online_features(...).to_df()` directly on the same store, interleaved
   call by call. Target: resource p99 <= 1.2x direct p99.
2. Batch scoring throughput (rows/s) on the path `batch_predictions` takes: point-in-time
   feature rows from Feast for a day's (key, timestamp) rows, then the model's predictions.

Setup (not timed): demo data in a temporary MLOPS_HOME, loaded into the offline and online
stores with the features asset's helpers, and a model fitted on it.

    .venv/bin/python benchmarks/bench_online_features.py --calls 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np


def setup(days: int, rows: int):
    home = Path(tempfile.mkdtemp(prefix="bench-online-"))
    os.environ["MLOPS_HOME"] = str(home)
    from mlops_assets.data import day_bounds, read_partition
    from mlops_assets.demo_data import DEMO_START, write_demo_data
    from mlops_assets.features import feast_definitions, feature_view_name, write_offline_partition
    from mlops_assets.spec import load_spec
    from mlops_assets.validation import standardize
    from mlops_resources.feast_store import FeastResource

    write_demo_data(days=days, rows_per_day=rows)
    spec = load_spec()
    feast = FeastResource()
    frames = []
    for i in range(days):
        day = DEMO_START + timedelta(days=i)
        df = standardize(read_partition(spec, day)[0], spec)
        write_offline_partition(spec, feast, day, df)
        frames.append(df)
    feast.apply(feast_definitions(spec, feast))
    start, _ = day_bounds(DEMO_START)
    _, end = day_bounds(DEMO_START + timedelta(days=days - 1))
    feast.materialize(start, end, [feature_view_name(spec)])
    return spec, feast, frames


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000


def online_reads(spec, feast, keys: list[str], calls: int) -> None:
    from mlops_assets.features import feature_refs

    refs = feature_refs(spec)
    store = feast.store()
    resource_ms, direct_ms = [], []
    for i in range(calls + 50):
        row = [{spec.entity_key: keys[i % len(keys)]}]
        order = [(resource_ms, feast.online_features), (direct_ms, None)]
        for bucket, call in order if i % 2 else order[::-1]:
            started = time.perf_counter()
            if call is None:
                store.get_online_features(features=refs, entity_rows=row).to_df()
            else:
                call(row, refs)
            if i >= 50:  # the first calls warm caches
                bucket.append(time.perf_counter() - started)
    for name, samples in (("FeastResource", resource_ms), ("Feast directly", direct_ms)):
        print(
            f"{name:15s} single-entity online read: p50 {percentile(samples, 50):.3f} ms, "
            f"p99 {percentile(samples, 99):.3f} ms ({len(samples)} calls)"
        )
    ratio = percentile(resource_ms, 99) / percentile(direct_ms, 99)
    p50 = percentile(resource_ms, 50) / percentile(direct_ms, 50)
    print(f"p99 ratio resource/direct {ratio:.2f} (target <= 1.2); p50 ratio {p50:.2f}")


def batch_scoring(spec, feast, frames, repeats: int) -> None:
    from mlops_assets.features import feature_refs
    from mlops_assets.inference import score
    from mlops_assets.ml.estimators import build_estimator

    train = frames[0]
    model = build_estimator(spec).fit(train[spec.feature_names], train[spec.label])
    import pandas as pd

    for scored in (frames[1], pd.concat(frames[1:], ignore_index=True)):
        entities = scored[[spec.entity_key, spec.timestamp]]
        joined, predicted = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            rows = feast.historical_features(entities, feature_refs(spec))
            middle = time.perf_counter()
            score(model, rows[spec.feature_names], spec)
            joined.append(middle - started)
            predicted.append(time.perf_counter() - middle)
        n = len(entities)
        total = statistics.median(joined) + statistics.median(predicted)
        print(
            f"batch scoring {n} rows: {n / total:,.0f} rows/s end to end (Feast point-in-time "
            f"join {n / statistics.median(joined):,.0f} rows/s, model "
            f"{n / statistics.median(predicted):,.0f} rows/s; median of {repeats})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=2000, help="rows per day")
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec, feast, frames = setup(args.days, args.rows)
    keys = list(dict.fromkeys(frames[-1][spec.entity_key]))
    online_reads(spec, feast, keys, args.calls)
    batch_scoring(spec, feast, frames, args.repeats)


if __name__ == "__main__":
    main()
