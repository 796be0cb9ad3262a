"""Concurrent runs on one Feast store do not fail each other (issue 18, issue 17 item 4).

Feast puts a feature view in MATERIALIZING while it loads the online store and, by default,
refuses every read of it meanwhile, offline reads included: a `batch_predictions` of one run
failed while a `features` step of another materialized, and a `features` step killed mid-way
left the view refusing reads for good. Real Feast, real processes, a real SIGKILL.
"""

import os
import signal
import subprocess
from datetime import date

import pandas as pd
import pytest

from mlops_assets.data import day_bounds
from mlops_assets.demo_data import write_demo_data
from mlops_assets.features import (
    feast_definitions,
    feature_refs,
    feature_view_name,
    write_offline_partition,
)
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource
from tests.conftest import REPO, python_command, race_scripts

START = date(2024, 2, 1)
DAYS = 4
ROWS = 200

# Materializes one day in a child process whose online write hangs once Feast has put the view
# in MATERIALIZING (and the registry lock is held): the parent kills it there.
HANGING_WRITER = """
import sys, time
from datetime import date
from feast.infra.passthrough_provider import PassthroughProvider
from mlops_assets.data import day_bounds
from mlops_assets.features import feature_view_name
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource

def hang(*args, **kwargs):
    print("HANGING IN MATERIALIZE", flush=True)
    time.sleep(600)

PassthroughProvider.materialize_single_feature_view = hang
day = date.fromisoformat(sys.argv[1])
FeastResource().materialize(*day_bounds(day), [feature_view_name(load_spec())])
"""

# Writers apply and materialize their days while readers join features, all at once.
RACER = """
import json, sys
from datetime import date
import pandas as pd
from mlops_assets.data import day_bounds
from mlops_assets.features import feast_definitions, feature_refs, feature_view_name
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource

spec = load_spec()
role, days = sys.argv[1], [date.fromisoformat(d) for d in sys.argv[2:]]
reads = 0
for _ in range(3):
    for day in days:
        feast = FeastResource()
        if role == "writer":
            feast.apply(feast_definitions(spec, feast))
            feast.materialize(*day_bounds(day), [feature_view_name(spec)])
        else:
            rows = pd.read_parquet(feast.offline_data_dir / spec.name / f"{day}.parquet")
            joined = feast.historical_features(
                rows[[spec.entity_key, spec.timestamp]], feature_refs(spec)
            )
            assert len(joined) == len(rows)
            reads += 1
print(json.dumps({"role": role, "reads": reads}))
"""


@pytest.fixture
def store(home):
    """The demo spec's feature view with DAYS days in the offline and online stores."""
    spec = load_spec()
    feast = FeastResource()
    files = write_demo_data(start=START, days=DAYS, rows_per_day=ROWS)
    days = [START + pd.Timedelta(days=i) for i in range(DAYS)]
    for day, path in zip(days, files, strict=True):
        write_offline_partition(spec, feast, day, pd.read_parquet(path))
    feast.apply(feast_definitions(spec, feast))
    feast.materialize(day_bounds(days[0])[0], day_bounds(days[-1])[1], [feature_view_name(spec)])
    return {"spec": spec, "days": days, "files": files}


def view_state(spec) -> str:
    """The view's state as a fresh process reads the registry."""
    return FeastResource().store().get_feature_view(feature_view_name(spec)).state.name


def entity_rows(spec, path) -> pd.DataFrame:
    return pd.read_parquet(path)[[spec.entity_key, spec.timestamp]]


def test_a_writer_killed_mid_materialize_breaks_no_read_and_the_next_write_recovers(
    store, tmp_path
):
    spec, days = store["spec"], store["days"]
    log = tmp_path / "writer.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            python_command(HANGING_WRITER, days[-1].isoformat()),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        lines = []
        while child.poll() is None and "HANGING IN MATERIALIZE" not in lines[-1:]:
            lines.append(child.stdout.readline().strip())
        assert child.poll() is None, log.read_text()[-3000:]
        assert view_state(spec) == "MATERIALIZING"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert view_state(spec) == "MATERIALIZING"  # what a kill during `features` leaves

    # Reads do not depend on the state: the offline join of training_set / batch_predictions,
    # and the online endpoint's read.
    feast = FeastResource()
    rows = entity_rows(spec, store["files"][0])
    joined = feast.historical_features(rows, feature_refs(spec))
    assert len(joined) == len(rows)
    assert joined[spec.feature_names].notna().all().all()
    key = str(rows[spec.entity_key].iloc[-1])
    online = feast.online_features([{spec.entity_key: key}], feature_refs(spec))
    assert len(online) == 1

    # The dead writer's lock is gone, and the next materialization puts the view back.
    quick = FeastResource(registry_lock_timeout_seconds=10)
    recovered = quick.materialize(*day_bounds(days[-1]), [feature_view_name(spec)])
    assert recovered == [feature_view_name(spec)]
    assert view_state(spec) == "AVAILABLE_ONLINE"


def test_a_failed_materialization_after_a_kill_leaves_the_view_readable(store, monkeypatch):
    """Feast restores GENERATED (not servable) when a materialization of a view found in
    MATERIALIZING fails; recovering first makes it restore AVAILABLE_ONLINE."""
    from feast.feature_view import FeatureViewState
    from feast.infra.passthrough_provider import PassthroughProvider

    spec, days = store["spec"], store["days"]
    feast = FeastResource()
    fs = feast.store()
    view = fs.get_feature_view(feature_view_name(spec))
    view.state = FeatureViewState.MATERIALIZING
    fs.registry.apply_feature_view(view, fs.project, commit=True)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PassthroughProvider, "materialize_single_feature_view", fail)
    with pytest.raises(OSError, match="disk full"):
        FeastResource().materialize(*day_bounds(days[-1]), [feature_view_name(spec)])
    assert view_state(spec) == "AVAILABLE_ONLINE"
    rows = entity_rows(spec, store["files"][1])
    assert len(FeastResource().historical_features(rows, feature_refs(spec))) == len(rows)


def test_overlapping_writers_and_readers_do_not_fail_each_other(store):
    """Two `features`-like writers and two readers on one store at once, as overlapping runs
    do: every process succeeds and the view ends servable."""
    days = [d.isoformat() for d in store["days"]]
    results = race_scripts(
        RACER,
        [["writer", *days[:2]], ["writer", *days[2:]], ["reader", *days], ["reader", *days]],
        timeout=600,
    )
    assert [r["reads"] for r in results] == [0, 0, 3 * DAYS, 3 * DAYS]
    assert view_state(store["spec"]) == "AVAILABLE_ONLINE"
