"""Online inference: the suite's server (`python -m mlops_assets serve`) against a plain FastAPI
+ model script doing the same work (benchmarks/plain_serving.py: Feast online read, skops
model, predict_proba, JSON), on the same machine, store and model, in the same run.

1. Latency (p50, p99), throughput and the server's CPU time per request for single-entity
   requests (from `--clients` concurrent loopback connections) and 100-entity requests (from
   `--batch-clients`), `--seconds` per round; the two servers take turns, `--rounds` times
   each, and the medians are compared. The load comes from keep-alive connections driven by a
   few lines of asyncio (not an HTTP client library), so that the client, on the same cores,
   takes as little CPU from the servers as possible.
2. Promotions under load: `--promotions` champion moves (compare-and-set, alternating two
   versions) while clients send single-entity requests for `--promotion-seconds`; every answer
   must be a 200 naming one version.

Setup (not timed, ~2 min): demo data in a temporary MLOPS_HOME (or `--home DIR`, reused when
set up), loaded into the Feast offline and online stores (sqlite) with the features asset's
helpers, two HistGradientBoosting models of the demo spec registered through the suite's
logging (skops), v1 the champion.

    .venv/bin/python benchmarks/bench_serving.py --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    from mlops_assets.ml.estimators import build_estimator
    from mlops_assets.ml.model_kinds import log_sklearn_model
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


class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON: a few lines of asyncio instead of an
    HTTP client library, so that the load generator, on the same two cores, costs the servers
    as little CPU as possible (httpx's client took more CPU per request than the server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(
    port: int, keys: list[str], batch: int, clients: int, seconds: float
) -> tuple[list[float], int, int, set[frozenset[str]]]:
    """(latencies, requests, failures, version sets seen) for `seconds` of requests from
    `clients` connections, each sending its next request when the previous is answered."""
    latencies: list[float] = []
    failures = 0
    versions: set[frozenset[str]] = set()
    deadline = time.monotonic() + seconds

    async def client(seed: int) -> None:
        nonlocal failures
        rng = random.Random(seed)
        connection = await Connection.open(port)
        try:
            while time.monotonic() < deadline:
                entities = [{"customer_id": k} for k in rng.sample(keys, batch)]
                body = json.dumps({"entities": entities}).encode()
                started = time.perf_counter()
                try:
                    status, data = await connection.post("/predict", body)
                except (OSError, asyncio.IncompleteReadError):
                    failures += 1
                    connection.close()
                    connection = await Connection.open(port)
                    continue
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures += 1
                    continue
                answer = json.loads(data)
                rows = {r.get("version") for r in answer["predictions"]}
                if "version" in answer:
                    versions.add(frozenset(rows | {answer["version"]}))
        finally:
            connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, len(latencies) + failures, failures, versions


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    server: subprocess.Popen, port: int, keys: list[str], batch: int, clients: int, seconds: float
) -> dict:
    asyncio.run(load(port, keys, batch, clients, min(2.0, seconds)))  # warm-up
    cpu = cpu_seconds(server.pid)
    latencies, requests, failures, _ = asyncio.run(load(port, keys, batch, clients, seconds))
    cpu = cpu_seconds(server.pid) - cpu
    return {
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "rps": requests / seconds,
        "cpu_ms_per_request": cpu * 1000 / max(requests, 1),
        "failures": failures,
    }


def promotions(port: int, keys: list[str], spec, count: int, seconds: float, clients: int) -> None:
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
    _, requests, failures, versions = asyncio.run(load(port, keys, 1, clients, seconds))
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
        f"{summary['rps']:8.1f} req/s  server CPU {summary['cpu_ms_per_request']:6.2f} ms/request"
        f"  failures {sum(r['failures'] for r in rounds)}"
    )
    return summary


def prepare(args: argparse.Namespace) -> tuple[object, list[str], Path]:
    """The benchmark's state: set up in a new temporary MLOPS_HOME, or the one of `--home`
    when it holds a finished setup (it is then reused: the setup takes minutes)."""
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    done = home / "keys.txt"
    if done.exists():
        from mlops_assets.spec import load_spec

        return load_spec(home / "spec.yaml"), done.read_text().split(), home / "spec.yaml"
    if args.home:  # bench_online_features' setup makes its own temporary home: use ours
        import bench_online_features

        bench_online_features.tempfile = argparse.Namespace(mkdtemp=lambda prefix: str(home))
    spec, keys, spec_path = setup(args.days, args.rows)
    done.write_text("\n".join(keys))
    return spec, keys, spec_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000, help="rows per day")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32, help="for single-entity requests")
    parser.add_argument("--batch-clients", type=int, default=4, help="for 100-entity requests")
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--promotion-seconds", type=float, default=60.0)
    parser.add_argument("--home", help="MLOPS_HOME to set up in, or reuse when set up")
    parser.add_argument(
        "--serve-args",
        default="",
        help="more options of the suite's serve, e.g. '--batch-wait-ms 1'",
    )
    args = parser.parse_args()
    spec, keys, spec_path = prepare(args)
    import mlflow

    from mlops_resources.mlflow_tracking import MLflowResource

    mlflow.set_tracking_uri(MLflowResource().resolved_tracking_uri)
    mlflow.set_registry_uri(MLflowResource().resolved_tracking_uri)
    model_dir = mlflow.artifacts.download_artifacts(f"models:/{spec.model_name}/1")
    ports = {"suite": free_port(), "plain": free_port()}
    servers = {
        "suite": start(
            [sys.executable, "-m", "mlops_assets", "serve", "--config", str(spec_path)]
            + ["--port", str(ports["suite"]), "--log-level", "warning", *args.serve_args.split()],
            ports["suite"],
            "/ready",
        ),
        "plain": start(
            [sys.executable, str(HERE / "plain_serving.py"), model_dir, str(ports["plain"])],
            ports["plain"],
            "/predict",
        ),
    }
    try:
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; loopback clients: "
            f"{args.clients} (1 entity), {args.batch_clients} (100 entities)"
        )
        for batch, clients in ((1, args.clients), (100, args.batch_clients)):
            results: dict[str, list[dict]] = {"suite": [], "plain": []}
            for _ in range(args.rounds):
                for name in ("suite", "plain"):
                    results[name].append(
                        measure(servers[name], ports[name], keys, batch, clients, args.seconds)
                    )
            print(f"{batch}-entity requests:")
            ours, theirs = report("suite", results["suite"]), report("plain", results["plain"])
            print(
                f"  ratio suite/plain: p50 {ours['p50_ms'] / theirs['p50_ms']:.2f}, p99 "
                f"{ours['p99_ms'] / theirs['p99_ms']:.2f}, throughput "
                f"{ours['rps'] / theirs['rps']:.2f}, server CPU per request "
                f"{ours['cpu_ms_per_request'] / theirs['cpu_ms_per_request']:.2f}"
            )
        if args.promotions:
            promotions(
                ports["suite"], keys, spec, args.promotions, args.promotion_seconds, args.clients
            )
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
