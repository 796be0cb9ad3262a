"""batch_predictions joins and scores a day in chunks of entity rows (bounded memory): the
predictions are those of one join and one scoring of the whole day, with real Feast (DuckDB
offline store) and a real fitted model, champion and challenger."""

import pandas as pd
import pytest

from mlops_assets import inference
from mlops_assets.demo_data import DEMO_START, write_demo_data
from mlops_assets.features import feast_definitions, write_offline_partition
from mlops_assets.ml.estimators import build_estimator
from mlops_assets.spec import load_spec
from mlops_assets.validation import standardize
from mlops_resources.feast_store import FeastResource


def test_chunked_join_and_scoring_equal_one_pass(home, monkeypatch: pytest.MonkeyPatch):
    spec = load_spec()
    feast = FeastResource()
    days = [
        standardize(pd.read_parquet(p), spec)
        for p in write_demo_data(start=DEMO_START, days=2, rows_per_day=700)
    ]
    for day in days:
        write_offline_partition(spec, feast, day[spec.timestamp].min().date(), day)
    feast.apply(feast_definitions(spec, feast))
    champion = build_estimator(spec).fit(days[0][spec.feature_names], days[0][spec.label])
    challenger = build_estimator(spec).fit(days[1][spec.feature_names], days[1][spec.label])
    entities = days[1][[spec.entity_key, spec.timestamp]]
    keys = [spec.entity_key, spec.timestamp]

    def scored(chunk_rows: int) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
        monkeypatch.setattr(inference, "SCORING_CHUNK_ROWS", chunk_rows)
        return inference.scored_rows(feast, spec, entities, [champion, challenger])

    whole, whole_outputs = scored(10_000)
    chunked, chunked_outputs = scored(150)  # 5 chunks, the last one short
    assert len(chunked) == len(entities) == 700
    for frame, outputs in ((whole, whole_outputs), (chunked, chunked_outputs)):
        assert list(frame.columns) == [*keys, "prediction", "score"]
        assert all(len(o) == len(frame) for o in outputs)
        frame["challenger_score"] = outputs[1]["score"].to_numpy()
    pd.testing.assert_frame_equal(
        chunked.sort_values(keys, ignore_index=True), whole.sort_values(keys, ignore_index=True)
    )
    assert (chunked["score"] != chunked["challenger_score"]).any()  # two models were scored
