"""Code location load: importing definitions.py vs a bare `import dagster`.

definitions.py loads the repo's dg project: two models, defs/loan_default (the demo) and
defs/loan_default_linear, each a TabularMLPipeline built from its defs.yaml, plus the shared
resources. Each sample is a fresh interpreter (`python -X importtime` is not used: it slows
imports). The two commands alternate so that background load hits both. Target: ratio <= 1.5.

    .venv/bin/python benchmarks/bench_code_location_load.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import dagster"
CANDIDATE = "import definitions"
# the heavy libraries, plus the array libraries that would cost the target by themselves
LAZY = ["feast", "evidently", "great_expectations", "mlflow", "torch", "sklearn", "pandas", "numpy"]


def wall_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def heavy_modules_loaded() -> tuple[list[str], list[str]]:
    """The lazy libraries that importing definitions loaded, and the pipelines it holds."""
    listed = f"[m for m in {LAZY!r} if m in sys.modules]"
    keys = "definitions.defs.resolve_asset_graph().get_all_asset_keys()"
    pipelines = f"sorted({{k.path[0] for k in {keys}}})"
    code = f"import json, sys, definitions; print(json.dumps([{listed}, {pipelines}]))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    lazy, names = json.loads(out.stdout.strip().splitlines()[-1])
    return lazy, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    wall_seconds(CANDIDATE)  # warm the OS file cache for both
    baseline, candidate = [], []
    for _ in range(args.repeats):
        baseline.append(wall_seconds(BASELINE))
        candidate.append(wall_seconds(CANDIDATE))
    b, c = statistics.median(baseline), statistics.median(candidate)
    pairs = statistics.median(x / y for x, y in zip(candidate, baseline, strict=True))
    print(f"python -c '{BASELINE}':   median {b:.3f} s  (min {min(baseline):.3f})")
    print(f"python -c '{CANDIDATE}': median {c:.3f} s  (min {min(candidate):.3f})")
    print(f"ratio of medians {c / b:.2f}, median of paired ratios {pairs:.2f} (target <= 1.5)")
    lazy, pipelines = heavy_modules_loaded()
    print(f"pipelines in the code location: {', '.join(pipelines)}")
    print(f"lazy libraries loaded by definitions: {lazy or 'none'}")


if __name__ == "__main__":
    main()
