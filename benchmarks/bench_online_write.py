"""Online store write: Feast's stock `write_to_online_store` on its sqlite store against the
suite's store of entity rows (mlops_resources/feast_entity_rows.py), the same frames in the
same run.

For each size, one loan-like day (benchmarks/scale_data.py: the demo's 6 numeric and 3
categorical features, customers drawn from 5x the rows, so some repeat) is written as the
`online_features` asset writes it: `FeastResource.write_online` (the newest row per entity, in
key order, `FeatureStore.write_to_online_store` per 100,000 rows) into a fresh repo with the
demo spec's entity and view. Stock: `online_bulk_write=False` (Feast's provider and
SqliteOnlineStore); entity rows ("bulk"): the default. rows/s = entities written / seconds, as
the asset reports it. The stock side writes the first `--stock-max-rows` rows of a frame (at
~4,000 rows/s here 1M would take 4 minutes); the bulk side writes the same rows into another
fresh repo, and Feast's `get_online_features` answers of both for 5,000 of the entities are
compared (every feature value); then the bulk side writes the whole frame into a third repo.

    .venv/bin/python benchmarks/bench_online_write.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ANSWERED_ENTITIES = 5_000


def write(root: Path, bulk: bool, frame, answer: bool = True) -> tuple[int, float, dict | None]:
    """Entities written and seconds of `write_online(frame)` into a fresh repo at `root`, and
    (with `answer`) Feast's online answer for the first ANSWERED_ENTITIES entities."""
    from mlops_assets.features import feast_definitions, feature_refs, feature_view_name
    from mlops_assets.spec import bundled_demo_spec
    from mlops_resources.feast_store import FeastResource

    spec = bundled_demo_spec()
    feast = FeastResource(repo_path=str(root), online_bulk_write=bulk)
    feast.apply(feast_definitions(spec, feast))
    view = feature_view_name(spec)
    started = time.perf_counter()
    written = feast.write_online(view, frame, [spec.entity_key])
    seconds = time.perf_counter() - started
    answered = None
    if answer:
        keys = frame[spec.entity_key].drop_duplicates().head(ANSWERED_ENTITIES)
        rows = [{spec.entity_key: key} for key in keys]
        response = feast.store().get_online_features(features=feature_refs(spec), entity_rows=rows)
        answered = response.to_dict()
    shutil.rmtree(root, ignore_errors=True)
    return written, seconds, answered


def run(size: int, stock_max_rows: int, work: Path) -> dict:
    from scale_data import generate

    from mlops_assets.spec import bundled_demo_spec

    spec = bundled_demo_spec()
    frame = generate(date(2024, 1, 1), size)[[spec.entity_key, spec.timestamp, *spec.feature_names]]
    first = frame.iloc[: min(size, stock_max_rows) if stock_max_rows else size]
    write(work / "warm", True, frame.iloc[:10], answer=False)  # imports, first connection
    stock_written, stock_seconds, stock_answer = write(work / "stock", False, first)
    same_written, same_seconds, same_answer = write(work / "bulk_same", True, first)
    equal = stock_answer == same_answer
    all_written, all_seconds = same_written, same_seconds
    if len(first) < size:
        all_written, all_seconds, _ = write(work / "bulk_all", True, frame, answer=False)
    return {
        "rows": size,
        "stock_rows": len(first),
        "stock_entities": stock_written,
        "stock_seconds": round(stock_seconds, 2),
        "stock_rows_per_s": round(stock_written / stock_seconds),
        "bulk_same_rows_per_s": round(same_written / same_seconds),
        "speedup_same_rows": round(stock_seconds / same_seconds, 1),
        "bulk_entities": all_written,
        "bulk_seconds": round(all_seconds, 2),
        "bulk_rows_per_s": round(all_written / all_seconds),
        "served_values_equal": equal,
        "load_average": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="rows per frame")
    parser.add_argument(
        "--stock-max-rows",
        type=int,
        default=200_000,
        help="rows of each frame the stock path writes (0: all)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("MLOPS_HOME", tempfile.mkdtemp(prefix="bench-online-write-home-"))
    work = Path(tempfile.mkdtemp(prefix="bench-online-write-"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    results = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            r = run(size, args.stock_max_rows, work)
            results.append(r)
            print(
                f"{size:>9,}-row frame: stock {r['stock_rows_per_s']:>6,} rows/s "
                f"({r['stock_entities']:,} entities of its first {r['stock_rows']:,} rows in "
                f"{r['stock_seconds']} s); bulk {r['bulk_same_rows_per_s']:>6,} rows/s on the "
                f"same rows ({r['speedup_same_rows']}x, served values equal: "
                f"{r['served_values_equal']}), {r['bulk_rows_per_s']:>6,} rows/s on the whole "
                f"frame ({r['bulk_entities']:,} entities in {r['bulk_seconds']} s); "
                f"load {r['load_average']}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
