"""Governance overhead per candidate, against the candidate's own fit in the same run.

Demo-sized data (bundled demo spec: 14 days x 2,000 rows, 3-day holdout, hist gradient
boosting). Timed: the fit (the baseline), the governance report (slices, fairness,
calibration), the two PNG plots rendered and logged to MLflow, and the training set logged
as Parquet. The MLflow store is a temporary sqlite one.

    .venv/bin/python benchmarks/bench_governance.py [--repeats 3]
"""

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["MLOPS_HOME"] = tempfile.mkdtemp()

    import mlflow

    from mlops_assets.demo_data import DEMO_START, generate_day
    from mlops_assets.features import SPLIT_COLUMN
    from mlops_assets.ml.estimators import build_estimator
    from mlops_assets.ml.evaluation import model_output
    from mlops_assets.ml.governance import lineage
    from mlops_assets.ml.governance.plots import governance_figures
    from mlops_assets.ml.governance.report import governance_report, holdout_rows
    from mlops_assets.spec import load_spec
    from mlops_resources.mlflow_tracking import MLflowResource

    spec = load_spec()
    window, holdout = spec.model.training_window_days, spec.model.holdout_days
    days = [DEMO_START + timedelta(days=i) for i in range(window)]
    df = pd.concat([generate_day(d) for d in days], ignore_index=True)
    df[spec.label] = df[spec.label].astype(str)
    df[SPLIT_COLUMN] = np.where(df[spec.timestamp].dt.date >= days[-holdout], "holdout", "train")
    train = df[df[SPLIT_COLUMN] == "train"]
    timings: dict[str, list[float]] = {"fit": [], "report": [], "plots": [], "training_set": []}
    resource = MLflowResource()
    for _ in range(args.repeats):
        started = time.perf_counter()
        model = build_estimator(spec).fit(train[spec.feature_names], train[spec.label])
        timings["fit"].append(time.perf_counter() - started)
        with resource.start_run("bench"):
            started = time.perf_counter()
            holdout = holdout_rows(df)[spec.feature_names]
            report = governance_report(spec, df, *model_output(model, holdout, spec))
            timings["report"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for name, figure in governance_figures(spec, report).items():
                mlflow.log_figure(figure, f"{lineage.ARTIFACT_DIR}/{name}")
            timings["plots"].append(time.perf_counter() - started)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / lineage.TRAINING_SET_FILE
                df.to_parquet(path, index=False)
                size = path.stat().st_size
                mlflow.log_artifact(str(path), lineage.ARTIFACT_DIR)
            timings["training_set"].append(time.perf_counter() - started)
    median = {k: statistics.median(v) for k, v in timings.items()}
    overhead = median["report"] + median["plots"] + median["training_set"]
    print(f"{len(df)} rows ({len(train)} train), {args.repeats} repeats, medians:")
    for key, value in median.items():
        print(f"  {key:<13} {value:6.2f} s  ({value / median['fit']:.2f} x fit)")
    print(f"  training set artifact {size / 1e6:.2f} MB")
    print(f"governance overhead {overhead:.2f} s = {overhead / median['fit']:.2f} x the fit")


if __name__ == "__main__":
    main()
