"""Online inference: the suite's server (`python -m mlops_assets serve`) against a plain FastAPI
+ model script doing the same work (benchmarks/plain_serving.py: Feast online read, skops
model, predict_proba, JSON), on the same machine, store and model, in the same run.

1. Latency (p50, p99) and throughput for single-entity and 100-entity requests, from
   `--clients` concurrent loopback clients for `--seconds` per round; the two servers take
   turns, `--rounds` times each, and the medians are compared.
2. Promotions under load: `--promotions` champion moves (compare-and-set, alternating two
   versions) while clients send single-entity requests for `--promotion-seconds`; every answer
   must be a 200 naming one version.

Setup (not timed): demo data in a temporary MLOPS_HOME, loaded into the Feast offline and
online stores (sqlite) with the features asset's helpers, two HistGradientBoosting models of
the demo spec registered through the suite's logging (skops), v1 the champion.

    .venv/bin/python benchmarks/bench_serving.py --seconds 15 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from tests.reliability.test_fail_closed import free_port  # noqa: E402


def setup(days: int, rows: int) -> tuple[object, list[str], Path]:
    """The stores, two registered versions (v1 champion), the entity keys, the spec file."""
    from bench_online_features import setup as load_stores

    spec, _, frames = load_stores(days, rows)
    from mlops_assets.training import build_estimator, log_sklearn_model
    from mlops_resources.mlflow_tracking import MLflowResource

    mlflow = MLflowResource()
    for frame in frames[:2]:
        model = build_estimator(spec).fit(frame[spec.feature_names], frame[spec.label])
        with mlflow.start_run("bench-serving"):
            log_sklearn_model(model, spec, frame[spec.feature_names].head(50))
    mlflow.set_alias(spec.model_name, "champion", "1")
    keys = sorted(set(frames[-1][spec.entity_key]))
    spec_path = Path(os.environ["MLOPS_HOME"]) / "spec.yaml"
    text = (REPO / "mlops_assets" / "demo_spec.yaml").read_text()
    spec_path.write_text(text + "serving:\n  refresh_seconds: 0.5\n")
    return spec, keys, spec_path


def start(command: list[str], port: int, ready_path: str) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(Path(os.environ["MLOPS_HOME"]) / f"server-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server on {port} exited; see {log.name}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=5).status_code in (
                200,
                405,
            ):
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on {port} not ready")


async def load(
    url: str, keys: list[str], batch: int, clients: int, seconds: float
) -> tuple[list[float], int, int, set[frozenset[str]]]:
    """(latencies, requests, failures, version sets seen) for `seconds` of requests."""
    import httpx

    latencies: list[float] = []
    failures = 0
    versions: set[frozenset[str]] = set()
    deadline = time.monotonic() + seconds

    async def client(seed: int) -> None:
        nonlocal failures
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < deadline:
                body = {"entities": [{"customer_id": k} for k in rng.sample(keys, batch)]}
                started = time.perf_counter()
                try:
                    response = await http.post(url, json=body)
                except httpx.HTTPError:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1
                    continue
                answer = response.json()
                rows = {r.get("version") for r in answer["predictions"]}
                if "version" in answer:
                    versions.add(frozenset(rows | {answer["version"]}))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, len(latencies) + failures, failures, versions


def measure(url: str, keys: list[str], batch: int, clients: int, seconds: float) -> dict:
    asyncio.run(load(url, keys, batch, clients, min(2.0, seconds)))  # warm-up
    latencies, requests, failures, _ = asyncio.run(load(url, keys, batch, clients, seconds))
    return {
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "rps": requests / seconds,
        "failures": failures,
    }


def promotions(url: str, keys: list[str], spec, count: int, seconds: float, clients: int) -> None:
    from mlops_resources.mlflow_tracking import MLflowResource

    mlflow = MLflowResource()
    moved = []

    def mover() -> None:
        time.sleep(1.0)
        for _ in range(count):
            current = mlflow.champion(spec.model_name)
            target = "2" if current == "1" else "1"
            mlflow.move_champion(spec.model_name, target, expected=current)
            moved.append(target)
            time.sleep(max(0.0, (seconds - 2.0) / count))

    thread = threading.Thread(target=mover)
    thread.start()
    _, requests, failures, versions = asyncio.run(load(url, keys, 1, clients, seconds))
    thread.join()
    mixed = [v for v in versions if len(v) != 1]
    print(
        f"promotions under load: {len(moved)} champion moves in {seconds:.0f} s, {requests} "
        f"requests, {failures} failed, {len(mixed)} answers naming more than one version; "
        f"versions answered: {sorted(set().union(*versions))}"
    )


def report(name: str, rounds: list[dict]) -> dict:
    summary = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(
        f"  {name:8s} p50 {summary['p50_ms']:7.2f} ms  p99 {summary['p99_ms']:7.2f} ms  "
        f"{summary['rps']:8.1f} req/s  failures {sum(r['failures'] for r in rounds)}"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000, help="rows per day")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--promotion-seconds", type=float, default=60.0)
    args = parser.parse_args()
    os.environ["MLOPS_HOME"] = tempfile.mkdtemp(prefix="bench-serving-")
    os.environ["DAGSTER_HOME"] = str(Path(os.environ["MLOPS_HOME"]) / "dagster")
    spec, keys, spec_path = setup(args.days, args.rows)
    import mlflow

    model_dir = mlflow.artifacts.download_artifacts(f"models:/{spec.model_name}/1")
    suite_port, plain_port = free_port(), free_port()
    suite = start(
        [sys.executable, "-m", "mlops_assets", "serve", "--config", str(spec_path)]
        + ["--port", str(suite_port)],
        suite_port,
        "/ready",
    )
    plain = start(
        [sys.executable, str(HERE / "plain_serving.py"), model_dir, str(plain_port)],
        plain_port,
        "/predict",
    )
    urls = {
        "suite": f"http://127.0.0.1:{suite_port}/predict",
        "plain": f"http://127.0.0.1:{plain_port}/predict",
    }
    try:
        print(f"load average {os.getloadavg()[0]:.1f}; {args.clients} clients on loopback")
        for batch in (1, 100):
            results: dict[str, list[dict]] = {"suite": [], "plain": []}
            for _ in range(args.rounds):
                for name in ("suite", "plain"):
                    clients = args.clients if batch == 1 else max(1, args.clients // 2)
                    results[name].append(measure(urls[name], keys, batch, clients, args.seconds))
            print(f"{batch}-entity requests:")
            ours, theirs = report("suite", results["suite"]), report("plain", results["plain"])
            print(
                f"  ratio suite/plain: p50 {ours['p50_ms'] / theirs['p50_ms']:.2f}, p99 "
                f"{ours['p99_ms'] / theirs['p99_ms']:.2f}, throughput "
                f"{ours['rps'] / theirs['rps']:.2f}"
            )
        if args.promotions:
            promotions(
                urls["suite"], keys, spec, args.promotions, args.promotion_seconds, args.clients
            )
    finally:
        for process in (suite, plain):
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
