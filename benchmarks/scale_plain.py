"""The plain side of bench_scale.py: the suite's work for the same days with the libraries'
fastest public APIs and no orchestration. Each phase's seconds and peak RSS (VmHWM, reset with
/proc/self/clear_refs before the phase)."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

PLAIN_PHASES = {
    "ingest": "read Parquet, validate (the spec's GX rules, vectorized), write offline Parquet",
    "train": "read the window's offline files, fit, score the holdout, log + register in MLflow",
    "score": "load the model, score the day, write predictions",
    "drift": "Evidently DataDriftPreset on the spec's sample size per side",
}


class Phases:
    """Seconds and peak RSS per named phase (a name may repeat: times add, peaks max)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    def run(self, name: str, fn: Any, *args: Any) -> Any:
        Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        value = fn(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        status = Path("/proc/self/status").read_text()
        peak = next(int(x.split()[1]) * 1024 for x in status.splitlines() if "VmHWM" in x)
        self.peaks[name] = max(self.peaks.get(name, 0), peak)
        return value


def violations(df: pd.DataFrame, spec: dict, day: date) -> dict[str, int]:
    """The suite's expectations (mlops_assets/validation.py build_expectations), vectorized:
    rule -> count of offending rows (only failures)."""
    key, ts, label = spec["entity_key"], spec["timestamp"], spec["label"]
    names = [f["name"] for f in spec["features"]]
    start = pd.Timestamp(day, tz="UTC")
    found = {
        "columns": int(set(df.columns) != {key, ts, label, *names}),
        "nulls": int(df[[key, ts, label]].isna().any(axis=1).sum()),
        "unique_key_ts": int(df.duplicated([key, ts]).sum()),
        "ts_in_day": int((~df[ts].between(start, start + pd.Timedelta(days=1), "left")).sum()),
        "label_in_set": int((~df[label].isin(spec["classes"])).sum()),
    }
    for feature in spec["features"]:
        column = df[feature["name"]]
        bad = column.isna() if not feature.get("nullable") else pd.Series(False, index=df.index)
        if feature["type"] == "numeric":
            low, high = feature.get("min", -1.7e308), feature.get("max", 1.7e308)
            bad |= column.notna() & ~column.between(low, high)
        else:
            bad |= column.notna() & ~column.isin(feature["allowed_values"])
        found[feature["name"]] = int(bad.sum())
    for extra in spec.get("expectations", []):
        kwargs = extra["kwargs"]
        found["regex"] = int((~df[kwargs["column"]].str.fullmatch(kwargs["regex"])).sum())
    return {rule: count for rule, count in found.items() if count}


def ingest(spec: dict, home: Path, day: date) -> pd.DataFrame:
    path = spec["source"]["path"].replace("{date}", day.isoformat())
    df = pq.read_table(path).to_pandas()
    df[spec["label"]] = df[spec["label"]].astype(str)
    bad = violations(df, spec, day)
    if bad:
        raise SystemExit(f"plain validation failed on {day}: {bad}")
    offline = home / "offline"
    offline.mkdir(exist_ok=True)
    columns = [spec["entity_key"], spec["timestamp"], *[f["name"] for f in spec["features"]]]
    df[[*columns, spec["label"]]].to_parquet(offline / f"{day.isoformat()}.parquet", index=False)
    return df


def train(spec: dict, home: Path, days: list[date]) -> tuple[Any, pd.DataFrame]:
    import mlflow
    from sklearn.metrics import log_loss, roc_auc_score

    from mlops_assets.ml.estimators import build_estimator
    from mlops_assets.ml.model_kinds import untrusted_types
    from mlops_assets.spec import PipelineSpec

    typed = PipelineSpec.model_validate(spec)
    frame = pq.read_table([home / "offline" / f"{d.isoformat()}.parquet" for d in days]).to_pandas()
    holdout = frame[spec["timestamp"]] >= pd.Timestamp(days[-1], tz="UTC")
    X, y = frame[typed.feature_names], frame[spec["label"]]
    model = build_estimator(typed).fit(X[~holdout], y[~holdout])
    scores = model.predict_proba(X[holdout])[:, 1]
    metrics = {
        "roc_auc": roc_auc_score(y[holdout].astype(int), scores),
        "log_loss": log_loss(y[holdout].astype(int), scores),
    }
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    with mlflow.start_run():
        mlflow.log_params(spec["model"]["params"])
        mlflow.log_metrics(metrics)
        mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="skops",
            skops_trusted_types=untrusted_types(model),
            registered_model_name="plain_model",
            input_example=X.head(5),
        )
    reference = X[~holdout].sample(n=min(20_000, int((~holdout).sum())), random_state=0)
    return model, reference


def score(spec: dict, home: Path, df: pd.DataFrame, day: date) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.sklearn.load_model("models:/plain_model/latest")
    names = [f["name"] for f in spec["features"]]
    out = df[[spec["entity_key"], spec["timestamp"]]].copy()
    out["score"] = model.predict_proba(df[names])[:, 1]
    out["prediction"] = np.where(out["score"] >= 0.5, "1", "0")
    out.to_parquet(home / f"predictions_{day.isoformat()}.parquet", index=False)
    return out


def drift(spec: dict, reference: pd.DataFrame, current: pd.DataFrame) -> float:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    size = spec["monitoring"]["drift"].get("sample_size", 20_000)
    numeric = [f["name"] for f in spec["features"] if f["type"] == "numeric"]
    categorical = [f["name"] for f in spec["features"] if f["type"] == "categorical"]
    methods = spec["monitoring"]["drift"]
    per_method = {c: methods["numeric"]["method"] for c in numeric}
    per_method |= {c: methods["categorical"]["method"] for c in categorical}
    ref, cur = (d.sample(n=min(size, len(d)), random_state=0) for d in (reference, current))
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(columns=[*numeric, *categorical], per_column_method=per_method)
    snapshot = Report([preset]).run(
        Dataset.from_pandas(cur[[*numeric, *categorical]], data_definition=definition),
        Dataset.from_pandas(ref[[*numeric, *categorical]], data_definition=definition),
    )
    snapshot.get_html_str(as_iframe=False)
    return float(snapshot.dict()["metrics"][0]["value"]["share"])


def run_plain(spec: dict, home: Path, days: list[date], window: int) -> dict:
    """Ingest the window's days, then the lifecycle day and the daily day, phase by phase."""
    runs = []
    for day in days[:window]:
        phases = Phases()
        phases.run("ingest", ingest, spec, home, day)
        runs.append({"job": "ingest", "day": day.isoformat(), **vars(phases)})
    phases = Phases()
    today = phases.run("ingest", ingest, spec, home, days[window])
    # the suite's window for the lifecycle day: every file has arrived, so it ends on that day
    train_days = [days[window] - timedelta(days=window - 1 - i) for i in range(window)]
    _, reference = phases.run("train", train, spec, home, train_days)
    phases.run("score", score, spec, home, today, days[window])
    phases.run("drift", drift, spec, reference, today)
    runs.append({"job": "lifecycle", "day": days[window].isoformat(), **vars(phases)})
    phases = Phases()
    today = phases.run("ingest", ingest, spec, home, days[window + 1])
    phases.run("score", score, spec, home, today, days[window + 1])
    phases.run("drift", drift, spec, reference, today)
    runs.append({"job": "daily", "day": days[window + 1].isoformat(), **vars(phases)})
    for run in runs:
        run["seconds_total"] = round(sum(run["seconds"].values()), 2)
        run["seconds"] = {k: round(v, 2) for k, v in run["seconds"].items()}
    return {"runs": runs}
