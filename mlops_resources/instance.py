"""The local Dagster instance: the dagster.yaml the suite writes into $DAGSTER_HOME.

SQLite storage in that folder (Dagster's default), no telemetry, and a run queue sized for a
laptop: the daemon starts at most MAX_CONCURRENT_RUNS runs at once, and at most one run per
pipeline (every job of a pipeline carries the tag PIPELINE_TAG, see mlops_assets/pipeline.py).
A burst of sensor requests then waits in the queue instead of starting ten runs on two cores.

Pools (Dagster concurrency pools) name the steps that must be serial across pipelines:
FEAST_POOL (`features`, which writes the Feast registry shared by every pipeline) and
CHAMPION_POOL (`model_promotion` and the rollback op, which move a `champion` alias). Every
pool gets POOL_LIMIT, at run granularity: the daemon does not start a run while another run
that holds the same pool is in progress. Run granularity rather than op granularity because
an in-process run (the CLI) that is killed would keep an op slot for ever and block every later
step of that pool; at run granularity nothing is claimed by steps, and a killed run only holds
its queue place, as it already does for the per-pipeline limit (docs/deployment.md). Inside a
process, and between the CLI and the daemon, the same steps are serialized by file locks (the
Feast registry lock) and compare-and-set (the alias move), which die with their holder.

Written by `python -m mlops_assets` (demo, rollback, retire) and by `make dev` before
`dagster dev` starts (`python -m mlops_resources.instance`). A dagster.yaml that the suite did
not write (its first line is not MARKER), such as deploy/production/dagster.yaml copied there,
is never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlops_resources.storage import dagster_home

MARKER = "# Written by mlops_assets"
PIPELINE_TAG = "mlops/pipeline"
MAX_CONCURRENT_RUNS = 2
RUNS_PER_PIPELINE = 1
FEAST_POOL = "feast_registry"
CHAMPION_POOL = "champion_alias"
POOL_LIMIT = 1
POOL_GRANULARITY = "run"

DAGSTER_YAML = f"""\
{MARKER} (mlops_resources/instance.py); rewritten by newer versions of the suite.
# Delete this first line to keep your own edits. SQLite storage in this folder, no telemetry.
telemetry:
  enabled: false
nux:
  enabled: false
# Runs launched by sensors, schedules and the UI wait in a queue; the daemon starts at most
# {MAX_CONCURRENT_RUNS} at once, and at most {RUNS_PER_PIPELINE} per pipeline (tag {PIPELINE_TAG}).
run_coordinator:
  module: dagster
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: {MAX_CONCURRENT_RUNS}
    tag_concurrency_limits:
      - key: {PIPELINE_TAG}
        value:
          applyLimitPerUniqueValue: true
        limit: {RUNS_PER_PIPELINE}
  # Pools {FEAST_POOL} (Feast registry writes) and {CHAMPION_POOL} (champion alias moves):
  # {POOL_LIMIT} run at a time holding each, checked when the daemon starts a run.
  pools:
    default_limit: {POOL_LIMIT}
    granularity: {POOL_GRANULARITY}
"""


def write_instance_yaml(home: Path | None = None) -> Path:
    """$DAGSTER_HOME/dagster.yaml (created with its folder): written when missing or when an
    earlier version of the suite wrote it, left alone otherwise. Returns its path."""
    folder = home or dagster_home()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dagster.yaml"
    current = path.read_text() if path.exists() else None
    if current is None or (current.startswith(MARKER) and current != DAGSTER_YAML):
        tmp = path.with_name(".dagster.yaml.tmp")
        tmp.write_text(DAGSTER_YAML)
        tmp.replace(path)
    return path


if __name__ == "__main__":
    print(write_instance_yaml(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
