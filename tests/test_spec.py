"""The pipeline spec: the demo loads; bad specs fail with the file, the key and the rule."""

import textwrap

import pytest
import yaml

from mlops_assets.spec import DEMO_SPEC_PATH, SpecError, load_spec
from tests.conftest import write_spec


def test_demo_spec_loads():
    spec = load_spec(DEMO_SPEC_PATH)
    assert spec.is_bundled_demo
    assert spec.model_name == "loan_default_model"
    assert len(spec.feature_names) == 9


def test_mlops_config_selects_the_spec(tmp_path, monkeypatch):
    path = write_spec(tmp_path / "mine.yaml", name="mine")
    monkeypatch.setenv("MLOPS_CONFIG", str(path))
    assert load_spec().name == "mine"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"lable": "defaulted"}, "lable: unknown key"),
        ({"task": "clustering"}, "task: Input should be"),
        ({"features": [{"name": "x", "type": "numeric", "min": 5, "max": 1}]}, "min 5.0 is above"),
        ({"features": [{"name": "x", "type": "numeric", "alowed": [1]}]}, "alowed: unknown key"),
        ({"gate": {"value_thresholds": {"auc": {"min": 0.7}}}}, "unknown metric(s) ['auc']"),
        ({"gate": {"value_thresholds": {"roc_auc": {"max": 0.7}}}}, "so give min, not max"),
        ({"model": {"training_window_days": 3, "holdout_days": 3}}, "must be smaller"),
        ({"partitions": {"start": "2024-02-01", "end": "2024-01-01"}}, "must be after start"),
        ({"label": "income"}, "used both as feature and as key/label"),
        ({"name": "../escape"}, "name: String should match pattern"),
        ({"classes": ["0", "1", "2"]}, "a binary task needs exactly 2"),
        ({"engine": "spark", "gate": {"shadow_days": 2}}, "gate.shadow_days: shadow scoring"),
        ({"engine": "spark", "serving": {"monitor_online": True}}, "serving.monitor_online"),
    ],
)
def test_bad_spec_names_file_key_and_rule(tmp_path, overrides, expected):
    path = write_spec(tmp_path / "bad.yaml", **overrides)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="pipeline spec not found"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)
    broken.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(SpecError, match="mapping at the top level"):
        load_spec(broken)


def test_yaml_anchors_and_merge_keys_are_not_duplicates(tmp_path):
    """A key given by a merge (`<<: *anchor`) may be overridden; a key written twice is refused."""
    raw = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    first, second, *rest = raw.pop("features")
    merged = "  - &num {name: income, type: numeric, min: 0, max: 2000000}\n"
    merged += "  - {<<: *num, name: loan_amount, min: 500, max: 100000}\n"
    head = yaml.safe_dump(raw) + "features:\n"
    tail = textwrap.indent(yaml.safe_dump(rest), "  ")
    path = tmp_path / "merge.yaml"
    path.write_text(head + merged + tail)
    features = load_spec(path).features
    assert [(f.name, f.min, f.max) for f in features[:2]] == [
        (first["name"], first["min"], first["max"]),
        (second["name"], second["min"], second["max"]),
    ]
    path.write_text(head + merged.replace("min: 500,", "min: 500, min: 600,") + tail)
    with pytest.raises(SpecError, match=r"line \d+: duplicate key features\.1\.min"):
        load_spec(path)


def test_yaml_native_and_text_dates_and_enums_load(tmp_path):
    """Strict types keep YAML's own types (an unquoted date, an int for a float); a quoted ISO
    date and an enum's text are accepted too, as the recorded JSON spec writes them."""
    spec = load_spec(write_spec(tmp_path / "dates.yaml", partitions={"start": "2024-01-02"}))
    assert spec.partitions.start.isoformat() == "2024-01-02"
    assert spec.features[0].max == 2_000_000.0 and spec.task.value == "binary_classification"
    assert load_spec(DEMO_SPEC_PATH).partitions.start.isoformat() == "2024-01-01"
