"""Two runs on one home never read each other's half-written value (issue 17 item 4).

Before: asset values were pickles written in place (dagster's FilesystemIOManager), so a run
reading a partition while another run rewrote it got a truncated pickle (`EOFError`), and two
runs saving one drift report shared one `.partial` file, which one of them renamed away under
the other. Now every write goes to a per-run temporary name and replaces the final name in one
rename. Real processes, real Dagster runs, real files; the runs overlap for several seconds.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import race_scripts

SECONDS = 8.0  # how long each racer keeps writing and reading (the old pickles tore within it)

# Each racer materializes `table` (a ~14 MB frame tagged with its writer and round) and then
# `check`, which loads the partition back, over and over, on the same folder and partition as
# the other racer. Every loaded frame must be whole: all rows of one (writer, round), with the
# row count and checksum that round wrote. A torn read fails the run and the racer.
IO_RACER = """
import json, sys, time
import numpy as np, pandas as pd
from dagster import AssetIn, DagsterInstance, DailyPartitionsDefinition, asset, materialize
from mlops_resources.io_manager import AssetIOManager

base, writer, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
days = DailyPartitionsDefinition(start_date="2024-01-01")
state = {"round": 0, "reads": 0, "foreign": 0}

def frame(writer, round_):
    rows = 600_000 + 1_000 * writer + round_  # each value has its own length
    return pd.DataFrame({
        "writer": np.full(rows, writer), "round": np.full(rows, round_),
        "value": np.arange(rows, dtype="float64"),
    })

@asset(partitions_def=days, key_prefix="race")
def table() -> pd.DataFrame:
    return frame(writer, state["round"])

@asset(partitions_def=days, key_prefix="race", ins={"table": AssetIn(["race", "table"])})
def check(table: pd.DataFrame) -> None:
    (who,), (round_,) = table["writer"].unique(), table["round"].unique()
    expected = frame(int(who), int(round_))
    assert len(table) == len(expected), (len(table), len(expected))
    assert table["value"].sum() == expected["value"].sum()
    state["reads"] += 1
    state["foreign"] += int(who) != writer

io_manager = AssetIOManager(base_path=base)
instance = DagsterInstance.ephemeral()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    state["round"] += 1
    result = materialize([table, check], partition_key="2024-01-02", instance=instance,
                         resources={"io_manager": io_manager})
    assert result.success
    for _ in range(3):  # reads only, while the other racer writes
        result = materialize([table, check], partition_key="2024-01-02", instance=instance,
                             resources={"io_manager": io_manager}, selection=["race/check"])
        assert result.success
print(json.dumps(state))
"""

# Each racer saves the same drift report key over and over with its own content and reads it
# back: every read must be one racer's whole report, and no save may fail.
REPORT_RACER = """
import json, sys, time
from mlops_resources.storage import ReportStoreResource

root, writer, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
reports = ReportStoreResource(base_uri=root)
saves = foreign = 0

def body(who, n):
    return f"<html>{who}:{n}:" + "x" * (500_000 + n) + "</html>"

deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    location = reports.save("drift_report/race/2024-01-02.html", body(writer, saves),
                            run_id=f"run-{writer}")
    saves += 1
    text = open(location, encoding="utf-8").read()
    who, n, _ = text[len("<html>"):].split(":", 2)
    assert text == body(who, int(n)), len(text)
    foreign += who != writer
print(json.dumps({"saves": saves, "foreign": foreign}))
"""


def test_two_runs_writing_and_reading_one_partition_never_see_a_torn_value(
    tmp_path: Path,
) -> None:
    results = race_scripts(
        IO_RACER, [[str(tmp_path), str(n), str(SECONDS)] for n in (1, 2)], timeout=300
    )
    assert all(r["reads"] > 0 for r in results)
    assert sum(r["foreign"] for r in results) > 0  # the runs did read each other's values
    names = sorted(p.name for p in (tmp_path / "race" / "table").iterdir())
    assert names == ["2024-01-02.parquet"]  # one value, no temporary file left behind


def test_two_runs_saving_one_drift_report_each_keep_their_own_partial_file(
    tmp_path: Path,
) -> None:
    results = race_scripts(
        REPORT_RACER, [[str(tmp_path), name, str(SECONDS)] for name in ("a", "b")], timeout=120
    )
    assert all(r["saves"] > 0 for r in results)
    assert sum(r["foreign"] for r in results) > 0  # the saves did overlap
    folder = tmp_path / "drift_report" / "race"
    assert sorted(p.name for p in folder.iterdir()) == ["2024-01-02.html"]
