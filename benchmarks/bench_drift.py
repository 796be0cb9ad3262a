"""Drift: the drift_report computation (EvidentlyResource.compare with the spec's sampling) on
1,000,000 rows x 20 features versus a vectorized numpy/scipy computation of the same
statistics on all rows. Same methods as the demo spec: normed Wasserstein (numeric, 0.1) and
Jensen-Shannon distance (categorical, 0.1). Targets: time ratio <= 2, the same drifted
columns, peak traced memory of the drift computation under the stated bound.

    .venv/bin/python benchmarks/bench_drift.py --rows 1000000 --sample-size 20000
"""

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from mlops_resources.drift_detection import DriftTest, EvidentlyResource

NUMERIC, CATEGORICAL = 15, 5
DRIFTED_NUMERIC = {"num_0", "num_1", "num_2"}
DRIFTED_CATEGORICAL = {"cat_0", "cat_1"}
THRESHOLD = 0.1
MEMORY_BOUND_MB = 600


def make_frame(rows: int, drifted: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for i in range(NUMERIC):
        shift = 0.5 if drifted and f"num_{i}" in DRIFTED_NUMERIC else 0.0
        data[f"num_{i}"] = rng.normal(shift, 1.0, rows)
    for i in range(CATEGORICAL):
        p = [0.1, 0.2, 0.3, 0.4] if drifted and f"cat_{i}" in DRIFTED_CATEGORICAL else [0.25] * 4
        data[f"cat_{i}"] = pd.Categorical(rng.choice(list("abcd"), rows, p=p))
    return pd.DataFrame(data)


def numpy_drift(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    """The same statistics on every row: Wasserstein / reference std, JS distance of shares."""
    scores = {}
    for column in reference:
        ref, cur = reference[column], current[column]
        if ref.dtype.kind == "f":
            scores[column] = wasserstein_distance(ref, cur) / np.std(ref)
        else:
            categories = sorted(set(ref.cat.categories) | set(cur.cat.categories))
            p = ref.value_counts(normalize=True).reindex(categories, fill_value=0)
            q = cur.value_counts(normalize=True).reindex(categories, fill_value=0)
            scores[column] = float(jensenshannon(p, q))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample-size", type=int, default=20_000)
    args = parser.parse_args()
    reference = make_frame(args.rows, drifted=False, seed=1)
    current = make_frame(args.rows, drifted=True, seed=2)
    numeric = [c for c in reference if c.startswith("num_")]
    categorical = [c for c in reference if c.startswith("cat_")]
    tests = {c: DriftTest("wasserstein", THRESHOLD) for c in numeric}
    tests |= {c: DriftTest("jensenshannon", THRESHOLD) for c in categorical}
    resource = EvidentlyResource()
    resource.compare(reference.head(1000), current.head(1000), numeric, categorical, tests, 1000)

    started = time.perf_counter()
    baseline = numpy_drift(reference, current)
    baseline_s = time.perf_counter() - started
    baseline_drifted = {c for c, score in baseline.items() if score >= THRESHOLD}

    tracemalloc.start()
    started = time.perf_counter()
    outcome = resource.compare(reference, current, numeric, categorical, tests, args.sample_size)
    ours_s = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ours_drifted = {c.column for c in outcome.columns if c.drifted}

    expected = DRIFTED_NUMERIC | DRIFTED_CATEGORICAL
    print(f"{args.rows:,} rows x {NUMERIC + CATEGORICAL} features per side")
    print(
        f"numpy/scipy on all rows:        {baseline_s:6.2f} s, drifted {sorted(baseline_drifted)}"
    )
    print(
        f"drift_report (Evidently, {args.sample_size:,} sampled): {ours_s:6.2f} s, "
        f"drifted {sorted(ours_drifted)}, sampled={outcome.sampled}"
    )
    print(f"time ratio drift_report / numpy: {ours_s / baseline_s:.2f} (target <= 2)")
    print(
        f"same drifted columns as numpy: {ours_drifted == baseline_drifted} "
        f"(planted: {ours_drifted == expected})"
    )
    print(
        f"peak traced memory of the drift computation: {peak / 2**20:.0f} MB "
        f"(bound {MEMORY_BOUND_MB} MB)"
    )
    worst = max(abs(c.score - baseline[c.column]) for c in outcome.columns)
    print(f"largest score difference sampled vs all rows: {worst:.4f}")


if __name__ == "__main__":
    main()
