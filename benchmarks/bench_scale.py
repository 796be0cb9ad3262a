"""Scale: the suite's real jobs at 20k..5M rows a day beside a plain script doing the same work.

For each size, in a fresh MLOPS_HOME: loan-like days (6 numeric and 3 categorical features, a
binary label with signal, unique (customer, timestamp)) are generated; then `ingest` runs for
the window's days, `lifecycle` for the next day (training on a `--window`-day window with a
1-day holdout, labels delivered 1 day late) and `daily` for the day after. The jobs run as
`make demo` runs them (job.execute_in_process on a persistent instance; --executor multiprocess:
dagster.execute_job with the multiprocess executor, one step at a time, a process per step, as
the daemon launches runs). A step's peak RSS is the highest VmHWM sampled (every 0.1 s, reset
after each read) while it ran: in process it includes the libraries earlier steps imported.
Step seconds come from the run's STEP_START / STEP_SUCCESS events. With --online-max-rows, the
online_features asset (spec online_features: true) is also run on the daily day, once.

The plain side (own process, same days): read Parquet with pyarrow, the same validation rules
vectorized in pandas, write the offline Parquet; read the window, fit the same estimator
(mlops_assets.ml.estimators.build_estimator), score the holdout, log params, metrics and the
skops model to MLflow and register it; score the day and write it; Evidently's DataDriftPreset
on the same sample size. Its peaks are per phase (VmHWM reset through /proc/self/clear_refs).

    .venv/bin/python benchmarks/bench_scale.py --sizes 20000,200000
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000,5000000 --online-max-rows 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from scale_data import day_bytes, write_days  # noqa: E402
from scale_plain import PLAIN_PHASES, run_plain  # noqa: E402

START = date(2024, 1, 1)
SPEC_VAR = "BENCH_SCALE_SPEC"
JOBS_BY_DAY = ("ingest", "lifecycle", "daily")


def bench_spec(home: Path, window: int, online: bool) -> dict:
    """The demo spec on the generated days: a `window`-day window, 1-day holdout, 8-digit ids."""
    raw = yaml.safe_load((ROOT / "mlops_assets" / "demo_spec.yaml").read_text())
    raw["name"] = "loan_scale"
    raw["source"] = {"path": str(home / "bench_data" / "loans_{date}.parquet")}
    raw["online_features"] = online
    raw["partitions"] = {"start": START.isoformat(), "end": "2024-02-01"}
    raw["model"] = {**raw["model"], "training_window_days": window, "holdout_days": 1}
    raw["expectations"] = [
        {
            "type": "expect_column_values_to_match_regex",
            "kwargs": {"column": "customer_id", "regex": "^C[0-9]{8}$"},
        }
    ]
    return raw


def spec_job(base: str):
    from mlops_assets.keys import scoped_name
    from mlops_assets.pipeline import build_definitions
    from mlops_assets.spec import load_spec

    spec = load_spec(os.environ[SPEC_VAR])
    return build_definitions(spec).resolve_job_def(scoped_name(spec, base))


def ingest_job():
    return spec_job("ingest")


def lifecycle_job():
    return spec_job("lifecycle")


def daily_job():
    return spec_job("daily")


class PeakWatcher:
    """Peak RSS over time. In process: this process's VmHWM every `interval` s, reset after
    each read (/proc/self/clear_refs), so each sample is the peak of its interval.
    Multiprocess: every descendant's VmHWM by pid (a step's process)."""

    def __init__(self, own: bool, interval: float = 0.1) -> None:
        self.own, self.interval = own, interval
        self.samples: list[tuple[float, float, int]] = []  # (from, to, peak bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        last = time.time()
        while not self._stop.is_set():
            pids = [os.getpid()] if self.own else [c.pid for c in me.children(recursive=True)]
            now = time.time()
            for pid in pids:
                peak = vm_hwm(pid)
                if peak:
                    self.samples.append((last, now, peak))
            if self.own:
                Path("/proc/self/clear_refs").write_text("5")
            last = now
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> int:
        """The largest peak sampled over an interval that overlaps [start, end]."""
        return max((p for a, b, p in self.samples if a <= end and b >= start), default=0)


def vm_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a process in bytes; 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(x.split()[1]) * 1024 for x in status.splitlines() if "VmHWM" in x), 0)


def step_times(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Step key's asset name -> (start, end) timestamps from the run's events."""
    from dagster import DagsterEventType

    spans: dict[str, list[float]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        name = event.step_key.rpartition("__")[2]
        if event.event_type == DagsterEventType.STEP_START:
            spans[name] = [entry.timestamp, entry.timestamp]
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            spans.setdefault(name, [entry.timestamp, entry.timestamp])[1] = entry.timestamp
    return {k: (v[0], v[1]) for k, v in spans.items()}


def run_suite(spec_path: Path, days: list[date], window: int, executor: str) -> dict:
    """The three jobs, in process as `make demo` runs them (execute_in_process), or through
    execute_job with the multiprocess executor (one step at a time, a process per step)."""
    from dagster import DagsterInstance, execute_job, reconstructable

    os.environ[SPEC_VAR] = str(spec_path)
    instance = DagsterInstance.get()
    plan = [(d, "ingest", ingest_job) for d in days[:window]]
    plan += [(days[window], "lifecycle", lifecycle_job), (days[window + 1], "daily", daily_job)]
    config = {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}}
    runs = []
    for day, name, fn in plan:
        with PeakWatcher(own=executor == "in_process") as watcher:
            started = time.time()
            if executor == "in_process":
                result = fn().execute_in_process(
                    partition_key=day.isoformat(), instance=instance, raise_on_error=False
                )
                ok, run_id = result.success, result.run_id
            else:
                with execute_job(
                    reconstructable(fn),
                    instance=instance,
                    run_config=config,
                    tags={"dagster/partition": day.isoformat()},
                ) as result:
                    ok, run_id = result.success, result.run_id
            seconds = time.time() - started
        if not ok:
            raise SystemExit(f"{name} {day} failed: see run {run_id} in {instance.root_directory}")
        steps = {
            step: {"seconds": round(end - start, 2), "peak_rss": watcher.peak_between(start, end)}
            for step, (start, end) in step_times(instance, run_id).items()
        }
        runs.append(
            {"job": name, "day": day.isoformat(), "seconds": round(seconds, 2), "steps": steps}
        )
    return {"runs": runs, "executor": executor}


def run_online(spec_path: Path, day: date) -> dict:
    """online_features once on `day`, in process, with the spec's online_features on."""
    from dagster import DagsterInstance

    from mlops_assets.keys import asset_key, scoped_name
    from mlops_assets.pipeline import build_definitions
    from mlops_assets.spec import load_spec

    raw = yaml.safe_load(spec_path.read_text())
    online_path = spec_path.with_name("online_spec.yaml")
    online_path.write_text(yaml.safe_dump({**raw, "online_features": True}))
    spec = load_spec(online_path)
    job = build_definitions(spec).resolve_job_def(scoped_name(spec, "ingest"))
    Path("/proc/self/clear_refs").write_text("5")
    started = time.time()
    result = job.execute_in_process(
        partition_key=day.isoformat(),
        instance=DagsterInstance.get(),
        asset_selection=[asset_key(spec, "online_features")],
    )
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    return {
        "seconds": round(time.time() - started, 2),
        "entities_written": meta["entities_written"],
        "write_seconds": meta["write_seconds"],
        "rows_per_second": meta["rows_per_second"],
        "peak_rss": vm_hwm(os.getpid()),
    }


def child(args: argparse.Namespace) -> None:
    """One side for one size, in this fresh process; prints JSON."""
    home = Path(args.home)
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    days = [START + timedelta(days=i) for i in range(args.window + 2)]
    if args.child == "suite":
        from mlops_resources.instance import write_instance_yaml

        write_instance_yaml(home / "dagster")
        out = run_suite(home / "spec.yaml", days, args.window, args.executor)
        if args.rows <= args.online_max_rows:
            out["online"] = run_online(home / "spec.yaml", days[-1])
    else:
        out = run_plain(yaml.safe_load((home / "spec.yaml").read_text()), home, days, args.window)
    print("RESULT " + json.dumps(out))


def run_child(side: str, home: Path, rows: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--child", side, "--home", str(home), "--rows", str(rows),
        "--window", str(args.window), "--online-max-rows", str(args.online_max_rows),
        "--executor", args.executor,
    ]  # fmt: skip
    # in the home: MLflow puts the plain side's artifacts under ./mlruns of the working directory
    done = subprocess.run(command, capture_output=True, text=True, cwd=home)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{side} at {rows} rows failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000,1000000,5000000")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--online-max-rows", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--executor", choices=["in_process", "multiprocess"], default="in_process")
    parser.add_argument("--child", choices=["suite", "plain"])
    parser.add_argument("--home")
    parser.add_argument("--rows", type=int)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from report_scale import print_size, summary_rows

    results = []
    for rows in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"scale_{rows}_") as tmp:
            home = Path(tmp) / "home"
            (home / "dagster").mkdir(parents=True)
            (home / "spec.yaml").write_text(yaml.safe_dump(bench_spec(home, args.window, False)))
            days = [START + timedelta(days=i) for i in range(args.window + 2)]
            files = write_days(home / "bench_data", days, rows)
            size = {"rows": rows, "window": args.window, "day_bytes": day_bytes(files[0])}
            size["suite"] = run_child("suite", home, rows, args)
            plain_home = Path(tmp) / "plain"
            plain_home.mkdir()
            (plain_home / "spec.yaml").write_text((home / "spec.yaml").read_text())
            (plain_home / "bench_data").symlink_to(home / "bench_data")
            size["plain"] = run_child("plain", plain_home, rows, args)
            results.append(size)
            print_size(size)
            sys.stdout.flush()
            # after each size, so a stopped run keeps the sizes it finished
            out = {"phases": PLAIN_PHASES, "sizes": results}
            Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n".join(summary_rows(results)))


if __name__ == "__main__":
    main()
