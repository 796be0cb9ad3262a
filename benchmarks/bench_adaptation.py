"""Adaptation: does the continuous-training loop recover after a change (issue 12)?

Four synthetic streams are generated here with numpy, with explicit ground truth (the mix of
the old and new concept and the covariate shift on every day, and the Bayes ROC AUC of the true
probabilities): (a) an abrupt concept change with a simultaneous covariate shift (x3's mean and
the segment shares move), (b) the same concept change without covariate shift, (c) a gradual
change of both over 7 days, (d) a stationary control. Binary label, three numeric features and
one categorical, an entity key and an event timestamp, the label in the same file, 1-day label
delay; one `stream_{date}.parquet` a day in a staging folder per stream.

Each stream runs through the real suite, `python -m mlops_assets demo --replay-from STAGED` (the
days arrive one at a time, the sensors drive the monitored days), in a fresh MLOPS_HOME and
DAGSTER_HOME per stream and window policy: the spec's default policy ("loop") and, unless
--quick, `sliding` ("the old loop"). What was served is read back from the run's own
batch_predictions (the IO manager's files) and scored against the day's labels; the feedback
runs' live ROC AUC (model_performance) is recorded beside it as a cross-check.

Baselines, on the same days and rows, with plain scikit-learn (the spec's estimator class and
params, the suite's preprocessing: scaled numerics, one-hot categorical):
    nightly   each day before scoring, trained on the 14 labelled days delivered by then
    none      no retraining: the model trained before the first scored day, kept
    oracle    each day before scoring, trained only on the post-change rows whose labels are
              delivered by then; before any exists, the `none` model (stationary: nightly)

Reported per stream: mean served ROC AUC over the 7 days from the change on, partitions from
the first post-change labels until within 0.02 of the oracle (first / for good), trainings
during the monitored days, retrains on the stationary control (false alarms), and promoted
candidates that were worse than the champion they replaced on the days the gate judged them
on. Results: benchmarks/results/adaptation.json, plot docs/images/adaptation.png.

    .venv/bin/python benchmarks/bench_adaptation.py           # 8 runs, two at a time
    .venv/bin/python benchmarks/bench_adaptation.py --quick   # fewer days, default policy only
    .venv/bin/python benchmarks/bench_adaptation.py --workdir DIR --keep   # keep each run's
        # MLOPS_HOME, demo.log and summary.json; then --workdir DIR --reuse re-analyses them

Runtime on 2 shared cores: 18.8 minutes measured with other work keeping the load average at
5-7 (a run took 210-340 s; about 110 s on a quieter machine). --quick writes
adaptation_quick.{json,png} in benchmarks/results instead.

Nothing binds a network port (embedded sqlite MLflow and Dagster instances).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "adaptation.json"
PLOT = ROOT / "docs" / "images" / "adaptation.png"
# --quick writes beside the full results instead of over them.
QUICK_RESULTS = ROOT / "benchmarks" / "results" / "adaptation_quick.json"
QUICK_PLOT = ROOT / "benchmarks" / "results" / "adaptation_quick.png"

START = date(2024, 1, 1)
WINDOW_DAYS = 14
LABEL_DELAY = 1
EVAL_DAYS = 7
TOLERANCE = 0.02
SEED = 42
MODEL_PARAMS = {"max_iter": 100, "learning_rate": 0.1}
NUMERIC = ["x1", "x2", "x3"]
SEGMENTS = ["a", "b", "c", "d"]
SEGMENT_SHARES = (np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.1, 0.2, 0.3, 0.4]))
SEGMENT_EFFECT = (np.array([0.0, 0.5, -0.5, 1.0]), np.array([1.0, -0.5, 0.5, 0.0]))
X3_SHIFT = 1.0  # standard deviations, at full covariate shift
KEY, TIMESTAMP, LABEL = "entity_id", "event_timestamp", "label"
POPULATION = 50_000
LOOP, OLD_LOOP = "default", "sliding"
BASELINES = ("nightly", "none", "oracle")


@dataclass(frozen=True)
class Stream:
    """A stream's ground truth: the change starts on day offset `change` (None: never) and
    reaches full strength after `ramp` days; `covariate` says whether x3 and the segment
    shares shift with it."""

    name: str
    title: str
    first_scored: int  # the demo's lifecycle day: the first day a champion serves
    change: int | None
    ramp: int
    covariate: bool
    days: int

    @property
    def first_monitored(self) -> int:
        return self.first_scored + 1

    def mix(self, offset: int) -> float:
        """How far the concept has moved to the new one on day `offset` (0 old, 1 new)."""
        if self.change is None or offset < self.change:
            return 0.0
        return min(1.0, (offset - self.change + 1) / self.ramp)

    def shift(self, offset: int) -> float:
        return self.mix(offset) if self.covariate else 0.0


def make_streams(quick: bool) -> list[Stream]:
    """The demo's warm-up (ingest days, then one lifecycle day: the first scored day), then
    the monitored days: a few stationary ones, the change, EVAL_DAYS days from it and one more
    (so the last evaluated day's labels are delivered inside the run)."""
    first = warmup_days()
    change = first + 1 + (1 if quick else 3)
    days = change + EVAL_DAYS + 1
    stationary = first + 1 + (10 if quick else 21)
    return [
        Stream(
            "abrupt_covariate", "abrupt concept + covariate shift", first, change, 1, True, days
        ),
        Stream("abrupt_concept", "abrupt concept only", first, change, 1, False, days),
        Stream("gradual", "gradual over 7 days", first, change, 7, True, days),
        Stream("stationary", "stationary control", first, None, 1, False, stationary),
    ]


def warmup_days() -> int:
    """How many days `demo --train-days 1` ingests before its lifecycle day: the CLI's own
    schedule for a spec like ours, so the streams follow it if it changes."""
    from mlops_assets.cli import demo_schedule
    from mlops_assets.pipeline import INGEST_JOB
    from mlops_assets.spec import PipelineSpec

    probe = Stream("probe", "", 0, None, 1, False, 10 * WINDOW_DAYS)
    plan = demo_schedule(PipelineSpec.model_validate(spec_for(probe, None)), 1, START)
    return sum(job == INGEST_JOB for _, job in plan)


def day_of(offset: int) -> date:
    return START + timedelta(days=offset)


def generate_day(stream: Stream, offset: int, rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One day's rows and their true positive-class probabilities. Old concept: x1 up, x2
    down, |x3| up; new concept: x1 down, x3 up, x2 down, other segment effects."""
    rng = np.random.default_rng([SEED, offset, zlib.crc32(stream.name.encode())])
    mix, shift = stream.mix(offset), stream.shift(offset)
    shares = (1 - shift) * SEGMENT_SHARES[0] + shift * SEGMENT_SHARES[1]
    segment = rng.choice(len(SEGMENTS), rows, p=shares)
    x1, x2 = rng.normal(0, 1, rows), rng.normal(0, 1, rows)
    x3 = rng.normal(X3_SHIFT * shift, 1, rows)
    old = 2.0 * x1 - 1.5 * x2 + 0.8 * np.abs(x3) + SEGMENT_EFFECT[0][segment] - 1.0
    new = -1.5 * x1 - 1.0 * x2 + 2.0 * x3 + SEGMENT_EFFECT[1][segment] - 1.0 - 2.0 * shift
    probability = 1 / (1 + np.exp(-((1 - mix) * old + mix * new)))
    label = (rng.random(rows) < probability).astype(int)
    seconds = np.sort(rng.choice(86_400, rows, replace=False))
    frame = pd.DataFrame(
        {
            KEY: [f"E{i:06d}" for i in rng.choice(POPULATION, rows, replace=False)],
            TIMESTAMP: pd.Timestamp(day_of(offset), tz="UTC") + pd.to_timedelta(seconds, "s"),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "x3": x3.round(4),
            "segment": np.array(SEGMENTS)[segment],
            LABEL: label,
        }
    )
    return frame, probability


def stage_stream(stream: Stream, folder: Path, rows: int) -> tuple[dict[int, pd.DataFrame], list]:
    """Write the stream's files; return the frames by day offset and the per-day truth."""
    from sklearn.metrics import roc_auc_score

    folder.mkdir(parents=True, exist_ok=True)
    frames, truth = {}, []
    for offset in range(stream.days):
        frame, probability = generate_day(stream, offset, rows)
        frame.to_parquet(folder / f"stream_{day_of(offset).isoformat()}.parquet", index=False)
        frames[offset] = frame
        truth.append(
            {
                "day": day_of(offset).isoformat(),
                "concept_mix": round(stream.mix(offset), 4),
                "covariate_shift": round(stream.shift(offset), 4),
                "positive_rate": round(float(frame[LABEL].mean()), 4),
                "bayes_roc_auc": round(float(roc_auc_score(frame[LABEL], probability)), 4),
            }
        )
    return frames, truth


def spec_for(stream: Stream, policy: str | None) -> dict[str, Any]:
    """The pipeline spec a user would write for the stream (demo spec adapted: no governance
    fairness, modest value thresholds); `policy` None keeps the default window policy."""
    model: dict[str, Any] = {
        "kind": "hist_gradient_boosting",
        "params": MODEL_PARAMS,
        "training_window_days": WINDOW_DAYS,
        "holdout_days": 3,
        "seed": SEED,
    }
    if policy is not None:
        model["window"] = {"policy": policy}
    return {
        "name": f"adapt_{stream.name}",
        "description": f"Synthetic stream for bench_adaptation: {stream.title}.",
        "source": {"path": "${MLOPS_HOME}/stream/stream_{date}.parquet"},
        "entity_key": KEY,
        "timestamp": TIMESTAMP,
        "label": LABEL,
        "task": "binary_classification",
        "classes": ["0", "1"],
        "partitions": {
            "start": START.isoformat(),
            "end": day_of(stream.days + 1).isoformat(),
        },
        "feature_ttl_days": 30,
        "features": [
            *({"name": name, "type": "numeric", "min": -20, "max": 20} for name in NUMERIC),
            {"name": "segment", "type": "categorical", "allowed_values": SEGMENTS},
        ],
        "model": model,
        "gate": {
            "value_thresholds": {"roc_auc": {"min": 0.6}},
            "change_thresholds": {"roc_auc": {"min_absolute_change": 0.0}},
        },
        "monitoring": {
            "drift": {
                "numeric": {"method": "wasserstein", "threshold": 0.1},
                "categorical": {"method": "jensenshannon", "threshold": 0.1},
                "drift_share": 0.3,
            },
            "performance": {
                "label_delay_days": LABEL_DELAY,
                "max_degradation": {"roc_auc": 0.05},
                "rollback_margin": {"roc_auc": 0.03},
            },
            "retrain_cooldown_days": 3,
            "nightly_training": False,
        },
        "governance": {
            "intended_use": "Benchmark only.",
            "slices": ["segment"],
            "min_slice_rows": 50,
        },
    }


# --- the suite's side: one worker process per (stream, policy) --------------------------------


def run_worker(args: argparse.Namespace) -> None:
    """In a fresh home: the demo CLI over the staged stream, then what it served and decided."""
    run_dir = Path(args.run_dir)
    home = run_dir / "home"
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    command = [
        sys.executable,
        "-m",
        "mlops_assets",
        "demo",
        "--json",
        "--config",
        str(run_dir / "spec.yaml"),
        "--train-days",
        "1",
        "--start",
        START.isoformat(),
        "--monitor-days",
        str(args.monitor_days),
        "--replay-from",
        args.staged,
    ]
    started = time.monotonic()
    if args.reuse and (run_dir / "summary.json").is_file():
        print(f"  [{run_dir.name}] reusing the demo's state in {run_dir}", file=sys.stderr)
    else:
        run_demo(run_dir, command)
    text = (run_dir / "summary.json").read_text()
    if not text.strip():
        raise SystemExit(f"{run_dir.name}: the demo printed no summary, see {run_dir}/demo.log")
    summary = json.loads(text)
    result = {
        "demo_seconds": round(time.monotonic() - started, 1),
        "served": served_predictions(home, Path(args.staged)),
        **inspect_instance(),
        **story_record(summary),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))


def run_demo(run_dir: Path, command: list[str]) -> None:
    """Run the demo CLI, its log to demo.log (day lines echoed), its JSON to summary.json."""
    # stdout goes to a file, so a large summary cannot block the pipe.
    with (run_dir / "demo.log").open("w") as log, (run_dir / "summary.json").open("w") as out:
        demo = subprocess.Popen(
            command, cwd=ROOT, env=os.environ.copy(), stdout=out, stderr=subprocess.PIPE, text=True
        )
        assert demo.stderr is not None
        for line in demo.stderr:
            log.write(line)
            if re.match(r"^\[\d{4}-\d\d-\d\d\] ", line):
                print(f"  [{run_dir.name}] {line.strip()}", file=sys.stderr, flush=True)
        demo.wait()
    # Exit 1 with a summary: the demo ran, but some run failed (counted in runs_failed).
    if demo.returncode not in (0, 1):
        raise SystemExit(f"{run_dir.name}: demo exited {demo.returncode}, see {run_dir}/demo.log")


def served_predictions(home: Path, staged: Path) -> dict[str, dict[str, Any]]:
    """Per partition: ROC AUC of batch_predictions as stored by the IO manager (what was
    served), on the day's labels, and the versions that served it."""
    from sklearn.metrics import roc_auc_score

    served = {}
    # storage/<pipeline>/<asset>/<partition>.parquet (a pickle without suffix before Parquet).
    for path in sorted((home / "storage").glob("**/batch_predictions/*")):
        if path.suffix not in ("", ".parquet"):
            continue
        predictions = pd.read_parquet(path) if path.suffix else pd.read_pickle(path)
        labels = pd.read_parquet(
            staged / f"stream_{path.stem}.parquet", columns=[KEY, TIMESTAMP, LABEL]
        )
        joined = predictions.merge(labels, on=[KEY, TIMESTAMP], how="inner")
        served[path.stem] = {
            "roc_auc": float(roc_auc_score(joined[LABEL] == 1, joined["score"])),
            "rows": len(joined),
            "versions": sorted({str(v) for v in joined["model_version"]}),
        }
    return served


def inspect_instance() -> dict[str, Any]:
    """From the Dagster instance: every training_set's window and every gate verdict, with the
    tags of the run that made it (trigger, alarm day)."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    instance = DagsterInstance.get()

    def records(asset: str) -> list[Any]:
        """Materializations of the asset, whether its key is `asset` or `<pipeline>/asset`."""
        keys = [k for k in instance.get_asset_keys() if k.path[-1] == asset]
        found = [
            record
            for key in keys
            for record in instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(key.path)), limit=10_000, ascending=True
            ).records
        ]
        return sorted(found, key=lambda r: r.storage_id)

    def run_tags(run_id: str) -> dict[str, str]:
        run = instance.get_run_by_id(run_id)
        tags = run.tags if run else {}
        return {
            "job": base_job(run.job_name) if run else "",
            **{k: v for k, v in tags.items() if k.startswith("mlops") or k == "dagster/run_key"},
        }

    def meta(record: Any) -> dict[str, Any]:
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    windows = []
    for record in records("training_set"):
        values = meta(record)
        windows.append(
            {
                "partition": record.partition_key,
                **run_tags(record.run_id),
                **{
                    k: values.get(k)
                    for k in (
                        "window_policy",
                        "window_reason",
                        "change_day",
                        "label_cutoff",
                        "days_used",
                        "holdout_days",
                        "train_rows",
                        "holdout_rows",
                    )
                },
            }
        )
    gates = []
    for record in records("model_promotion"):
        values = meta(record)
        gates.append(
            {
                "partition": record.partition_key,
                **run_tags(record.run_id),
                "candidate_version": values.get("candidate_version"),
                "blessed": values.get("blessed"),
                "champion_before": values.get("champion_before"),
                "champion_after": values.get("champion_after"),
                "champion_moved": values.get("champion_moved"),
                "judged_on": values.get("judged_on"),
                "message": values.get("message"),
                "rules": rule_rows(str(values.get("metrics", ""))),
            }
        )
    return {"training_sets": windows, "gates": gates}


def rule_rows(table: str) -> list[dict[str, Any]]:
    """The gate's rules from its markdown table (metric, rule, candidate, champion, passed)."""
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5:
            continue
        metric, rule, candidate, champion, passed = cells

        def number(text: str) -> float | None:
            try:
                return float(text)
            except ValueError:
                return None

        rows.append(
            {
                "metric": metric,
                "rule": rule,
                "candidate": number(candidate),
                "champion": number(champion),
                "passed": passed == "yes",
            }
        )
    return rows


def base_job(name: str) -> str:
    """`retrain` for `retrain` and for a pipeline-scoped `<pipeline>__retrain`."""
    return name.rpartition("__")[2]


def story_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The demo's JSON, cut to what explains adaptation: per day the runs, drift, served
    performance, drift sensor decisions and champion."""
    runs = [
        {"day": run["partition"], "job": base_job(run["job"]), "partition": run["partition"]}
        for run in summary["runs"]
    ]
    days = []
    for day in summary["days"]:
        feedback = {
            run["partition"]: run["performance"] for run in day["runs"] if "performance" in run
        }
        days.append(
            {
                "day": day["day"],
                "runs": [
                    {
                        "job": base_job(r["job"]),
                        "partition": r["partition"],
                        "success": r["success"],
                        **({"failed_steps": r["failed_steps"]} if not r["success"] else {}),
                    }
                    for r in day["runs"]
                ],
                "drift": {
                    k: day["drift"].get(k)
                    for k in ("drift_share", "drift_detected", "model_version")
                }
                if "drift" in day
                else None,
                "feedback": feedback,
                "drift_sensor_requests": [
                    r["run_key"] for r in day["drift_sensor"]["run_requests"]
                ],
                "drift_sensor_skip": day["drift_sensor"]["skip"],
                "new_data_sensor_skip": day["new_data_sensor"]["skip"],
                "gate_verdicts": [g["why"] for g in day["gate_verdicts"]],
                "champion_version": day["champion_version"],
            }
        )
        runs += [
            {"day": day["day"], "job": base_job(r["job"]), "partition": r["partition"]}
            for r in day["runs"]
        ]
    return {"runs": runs, "days": days, "runs_failed": summary["runs_failed"]}


# --- the baselines: plain scikit-learn on the same rows ----------------------------------------


def estimator() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    preprocess = ColumnTransformer(
        [
            ("numeric", StandardScaler(), NUMERIC),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ["segment"],
            ),
        ]
    )
    model = HistGradientBoostingClassifier(random_state=SEED, **MODEL_PARAMS)
    return Pipeline([("preprocess", preprocess), ("model", model)])


def baselines(stream: Stream, frames: dict[int, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """ROC AUC per scored day (the lifecycle day onwards) of nightly, none and oracle."""
    from sklearn.metrics import roc_auc_score

    fitted: dict[tuple[int, ...], Any] = {}

    def model(days: tuple[int, ...]) -> Any:
        if days not in fitted:
            rows = pd.concat([frames[d] for d in days], ignore_index=True)
            fitted[days] = estimator().fit(rows[[*NUMERIC, "segment"]], rows[LABEL])
        return fitted[days]

    initial = tuple(
        range(
            max(0, stream.first_scored - LABEL_DELAY - WINDOW_DAYS + 1),
            stream.first_scored - LABEL_DELAY + 1,
        )
    )
    out: dict[str, dict[str, float]] = {name: {} for name in BASELINES}
    for offset in range(stream.first_scored, stream.days):
        delivered = range(max(0, offset - LABEL_DELAY - WINDOW_DAYS + 1), offset - LABEL_DELAY + 1)
        post = tuple(d for d in delivered if stream.change is not None and d >= stream.change)
        chosen = {
            "nightly": tuple(delivered),
            "none": initial,
            "oracle": (post or initial) if stream.change is not None else tuple(delivered),
        }
        frame = frames[offset]
        for name, days in chosen.items():
            score = model(days).predict_proba(frame[[*NUMERIC, "segment"]])[:, 1]
            out[name][day_of(offset).isoformat()] = float(roc_auc_score(frame[LABEL], score))
    return out


# --- analysis ----------------------------------------------------------------------------------


def analyse(
    stream: Stream, served: dict[str, float], base: dict[str, dict[str, float]], run: dict
) -> dict[str, Any]:
    """The issue's measures for one (stream, policy) run."""
    monitored = {day_of(o).isoformat() for o in range(stream.first_monitored, stream.days)}
    retrains = [r for r in run["runs"] if r["job"] == "retrain" and r["day"] in monitored]
    promotions = [
        g
        for g in run["gates"]
        if g["champion_moved"] and g["champion_before"] not in (None, "none")
    ]
    # The gate's own numbers: candidate and replaced champion on the same judged rows.
    judged = [
        {
            "version": g["candidate_version"],
            "replaced": g["champion_before"],
            "partition": g["partition"],
            "judged_on": g["judged_on"],
            "candidate_roc_auc": r["candidate"],
            "champion_roc_auc": r["champion"],
        }
        for g in promotions
        for r in g["rules"]
        if r["metric"] == "roc_auc" and r["champion"] is not None and r["candidate"] is not None
    ]
    worse = [j for j in judged if j["candidate_roc_auc"] < j["champion_roc_auc"]]
    alarms = sum(
        "alarm" in (d["drift_sensor_skip"] or "") or bool(d["drift_sensor_requests"])
        for d in run["days"]
    )
    result: dict[str, Any] = {
        "trainings": len(retrains),
        "nightly_trainings": len(monitored),
        "promotions": len(promotions),
        "promotions_judged": judged,
        "worse_promotions": worse,
        "alarm_days": alarms,
        "runs_failed": run["runs_failed"],
    }
    if stream.change is None:
        days = sorted(monitored)
        result["mean_served_monitored"] = mean(served, days)
        result.update({f"mean_{name}_monitored": mean(base[name], days) for name in BASELINES})
        result["false_alarm_retrains"] = len(retrains)
        return result
    window = [day_of(stream.change + i).isoformat() for i in range(EVAL_DAYS)]
    result["eval_days"] = window
    result["mean_served"] = mean(served, window)
    result.update({f"mean_{name}": mean(base[name], window) for name in BASELINES})
    result["ratio_to_oracle"] = result["mean_served"] / result["mean_oracle"]
    # Labels of the change day are delivered with the next day: count from there.
    after = window[LABEL_DELAY:]
    within = [served[d] >= base["oracle"][d] - TOLERANCE for d in after]
    result["partitions_to_oracle_first"] = within.index(True) if any(within) else None
    settled = next((i for i in range(len(after)) if all(within[i:])), None)
    result["partitions_to_oracle_settled"] = settled
    result["worst_gap_to_oracle"] = max(base["oracle"][d] - served[d] for d in after)
    return result


def mean(values: dict[str, float], days: list[str]) -> float:
    return float(np.mean([values[d] for d in days]))


def targets(stream: Stream, result: dict[str, Any]) -> dict[str, bool]:
    """Issue 12's targets for the stream. "Within 0.02 of the oracle at most 2 partitions
    after the first post-change labels" is read as the issue measures it (partitions until
    within); whether it then stays within is reported beside it (`stays_within_0.02`), not as
    a target."""
    common = {"no_worse_promotion": not result["worse_promotions"]}
    if stream.change is None:
        return {**common, "zero_false_alarm_retrains": result["false_alarm_retrains"] == 0}
    first = result["partitions_to_oracle_first"]
    return {
        **common,
        "mean_ge_95pct_oracle": result["ratio_to_oracle"] >= 0.95,
        "mean_ge_nightly": result["mean_served"] >= result["mean_nightly"],
        "within_0.02_of_oracle_by_2": first is not None and first <= 2,
        "fewer_trainings_than_nightly": result["trainings"] < result["nightly_trainings"],
    }


def table(report: dict[str, Any]) -> str:
    header = (
        f"{'stream':<17} {'policy':<13} {'served':>6} {'oracle':>6} {'nightly':>7} {'none':>6} "
        f"{'/oracle':>7} {'to oracle':>11} {'gap':>5} {'train':>5} {'nightly':>7} {'alarms':>6} "
        f"{'worse':>5}  targets missed"
    )
    lines = [header, "-" * len(header)]
    for name, entry in report["streams"].items():
        for policy, result in entry["results"].items():
            stationary = "mean_served" not in result
            key = "_monitored" if stationary else ""
            to_oracle, gap = (
                ("-", "")
                if stationary
                else (
                    f"{fmt(result['partitions_to_oracle_first'])}/"
                    f"{fmt(result['partitions_to_oracle_settled'])}",
                    f"{result['worst_gap_to_oracle']:.3f}",
                )
            )
            missed = [k for k, ok in entry["targets"][policy].items() if not ok]
            lines.append(
                f"{name:<17} {policy:<13} {result['mean_served' + key]:>6.3f} "
                f"{result['mean_oracle' + key]:>6.3f} {result['mean_nightly' + key]:>7.3f} "
                f"{result['mean_none' + key]:>6.3f} "
                f"{'' if stationary else format(result['ratio_to_oracle'], '.3f'):>7} "
                f"{to_oracle:>11} {gap:>5} {result['trainings']:>5} "
                f"{result['nightly_trainings']:>7} {result['alarm_days']:>6} "
                f"{len(result['worse_promotions']):>5}  "
                f"{', '.join(missed) or 'none'}"
            )
    lines.append(
        "served/oracle/nightly/none: mean ROC AUC over the 7 days from the change on (stationary: "
        "all monitored days); to oracle: partitions after the first post-change labels until "
        f"within {TOLERANCE} of the oracle (first/for good); gap: the largest shortfall from "
        "the oracle on those days; train: retrainings on monitored "
        "days (nightly: one a day); alarms: days the drift sensor raised or acted on an alarm; "
        "worse: promoted candidates worse than the champion they replaced on the gate's days."
    )
    return "\n".join(lines)


def fmt(value: int | None) -> str:
    return "never" if value is None else str(value)


def plot(report: dict[str, Any], streams: list[Stream], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharey=True)
    styles = {
        "loop (default window policy)": ("tab:blue", "-", "o"),
        "old loop (sliding)": ("tab:purple", ":", "s"),
        "nightly": ("tab:orange", "--", None),
        "none": ("tab:gray", "-.", None),
        "oracle": ("tab:green", "-", None),
    }
    for axis, stream in zip(axes.flat, streams, strict=True):
        entry = report["streams"][stream.name]
        days = sorted(entry["baselines"]["oracle"])
        x = [
            (date.fromisoformat(d) - day_of(stream.change or stream.first_monitored)).days
            for d in days
        ]
        series = {
            **{
                ("loop (default window policy)" if policy == LOOP else "old loop (sliding)"): entry[
                    "served"
                ][policy]
                for policy in entry["served"]
            },
            **{name: entry["baselines"][name] for name in BASELINES},
        }
        for label, values in series.items():
            color, line, marker = styles[label]
            axis.plot(
                x,
                [values.get(d, np.nan) for d in days],
                color=color,
                linestyle=line,
                marker=marker,
                markersize=3,
                label=label,
            )
        truth = {t["day"]: t["bayes_roc_auc"] for t in entry["truth"]["days"]}
        axis.plot(x, [truth[d] for d in days], color="black", lw=0.6, alpha=0.5, label="Bayes")
        if stream.change is not None:
            # The evaluated days (from the change on); the change ramps over `ramp` of them.
            axis.axvspan(-0.5, EVAL_DAYS - 0.5, color="tab:gray", alpha=0.08)
            axis.axvspan(-0.5, stream.ramp - 0.5, color="tab:red", alpha=0.06)
            axis.axvline(-0.5, color="tab:red", lw=0.8)
        axis.set_title(stream.title)
        axis.set_xlabel("day from the change" if stream.change else "day from the first monitored")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("ROC AUC of served predictions")
    axes[1][0].set_ylabel("ROC AUC of served predictions")
    axes[0][0].legend(fontsize=8, loc="lower left")
    figure.suptitle(
        "bench_adaptation: ROC AUC of the served predictions per day (1-day label delay; "
        f"shaded: the {EVAL_DAYS} evaluated days, red: the change)"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


# --- driver ------------------------------------------------------------------------------------


def launch(
    stream: Stream, policy: str | None, staged: Path, root: Path, threads: int, reuse: bool
) -> Any:
    """Start a worker for (stream, policy) in its own folder; returns (process, folder)."""
    run_dir = root / f"{stream.name}-{policy or LOOP}"
    run_dir.mkdir(parents=True, exist_ok=reuse)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec_for(stream, policy), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    for key in ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_CONFIG"):
        env.pop(key, None)
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--run-dir",
        str(run_dir),
        "--staged",
        str(staged),
        "--monitor-days",
        str(stream.days - stream.first_monitored),
        *(["--reuse"] if reuse else []),
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env), run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer days, default policy only")
    parser.add_argument("--rows", type=int, default=1500, help="rows a day (default 1500)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--no-old-loop", action="store_true", help="skip the sliding policy")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: analyse the demo runs already there instead of running them again",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--staged", help=argparse.SUPPRESS)
    parser.add_argument("--monitor-days", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    started = time.monotonic()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_adaptation_"))
    root.mkdir(parents=True, exist_ok=True)
    streams = make_streams(args.quick)
    policies: list[str | None] = [None] if args.quick or args.no_old_loop else [None, OLD_LOOP]
    print(f"runs in {root}; {args.rows} rows a day; policies {[p or LOOP for p in policies]}")
    staged, frames, truth = {}, {}, {}
    for stream in streams:
        staged[stream.name] = root / "staged" / stream.name
        frames[stream.name], truth[stream.name] = stage_stream(
            stream, staged[stream.name], args.rows
        )
    # Longest runs first, so the two slots finish together.
    queue = sorted(((s, p) for p in policies for s in streams), key=lambda q: -q[0].days)
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    running: list[tuple[Any, Path, float]] = []
    finished: dict[tuple[str, str], Path] = {}
    base: dict[str, dict[str, dict[str, float]]] = {}

    def fill() -> None:
        while queue and len(running) < args.jobs:
            stream, policy = queue.pop(0)
            process, run_dir = launch(
                stream, policy, staged[stream.name], root, threads, args.reuse
            )
            print(f"started {run_dir.name}", flush=True)
            running.append((process, run_dir, time.monotonic()))

    fill()
    for stream in streams:  # baselines while the first runs go
        print(f"baselines for {stream.name} ...", flush=True)
        base[stream.name] = baselines(stream, frames[stream.name])
    while running:
        for item in list(running):
            process, run_dir, t0 = item
            if process.poll() is None:
                continue
            running.remove(item)
            if process.returncode != 0:
                raise SystemExit(f"{run_dir.name} failed ({process.returncode}); see {run_dir}")
            print(f"finished {run_dir.name} in {time.monotonic() - t0:.0f}s", flush=True)
            stream_name, _, policy = run_dir.name.partition("-")
            finished[(stream_name, policy)] = run_dir
        fill()
        time.sleep(1)
    report: dict[str, Any] = {
        "config": {
            "rows_per_day": args.rows,
            "start": START.isoformat(),
            "training_window_days": WINDOW_DAYS,
            "label_delay_days": LABEL_DELAY,
            "eval_days": EVAL_DAYS,
            "tolerance": TOLERANCE,
            "model": {"kind": "hist_gradient_boosting", "params": MODEL_PARAMS, "seed": SEED},
            "quick": args.quick,
            "jobs": args.jobs,
            "command": " ".join(
                [".venv/bin/python", "benchmarks/bench_adaptation.py", *sys.argv[1:]]
            ),
        },
        "streams": {},
    }
    for stream in streams:
        entry: dict[str, Any] = {
            "truth": {
                **asdict(stream),
                "change_day": day_of(stream.change).isoformat()
                if stream.change is not None
                else None,
                "days": truth[stream.name],
            },
            "baselines": base[stream.name],
            "served": {},
            "served_feedback": {},
            "results": {},
            "targets": {},
            "runs": {},
        }
        for policy in [p or LOOP for p in policies]:
            run = json.loads((finished[(stream.name, policy)] / "result.json").read_text())
            served = {day: value["roc_auc"] for day, value in run["served"].items()}
            unserved = sorted(set(base[stream.name]["oracle"]) - set(served))
            if unserved:
                failed = [r for d in run["days"] for r in d["runs"] if not r["success"]]
                raise SystemExit(
                    f"{stream.name}-{policy}: no batch_predictions for {unserved} (failed runs: "
                    f"{json.dumps(failed)[:2000]}); see {finished[(stream.name, policy)]}"
                )
            entry["served"][policy] = served
            entry["served_feedback"][policy] = {
                part: perf.get("live_roc_auc")
                for day in run["days"]
                for part, perf in day["feedback"].items()
            }
            entry["results"][policy] = analyse(stream, served, base[stream.name], run)
            entry["targets"][policy] = targets(stream, entry["results"][policy])
            entry["runs"][policy] = {
                k: run[k] for k in ("demo_seconds", "training_sets", "gates", "days")
            }
            entry["runs"][policy]["served_versions"] = {
                day: value["versions"] for day, value in run["served"].items()
            }
        report["streams"][stream.name] = entry
    report["runtime_seconds"] = round(time.monotonic() - started, 1)
    results, figure = (QUICK_RESULTS, QUICK_PLOT) if args.quick else (RESULTS, PLOT)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1, default=str))
    plot(report, streams, figure)
    print(table(report))
    print(
        f"runtime {report['runtime_seconds']:.0f}s; results {results.relative_to(ROOT)}, plot "
        f"{figure.relative_to(ROOT)}"
    )
    if not args.keep and not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
