"""The code location: loads for `dagster dev`, validates, and stays light to import."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mlops_assets.keys import asset_key

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["feast", "evidently", "great_expectations", "mlflow", "torch", "sklearn"]
# Not heavy by the list, but each costs a fifth of `import dagster` or more: the load
# target (benchmarks/bench_code_location_load.py, <= 1.5x) needs them lazy too.
ARRAY_LIBRARIES = ["pandas", "numpy", "pyarrow"]


def test_dagster_definitions_validate(home):
    (home / "dagster").mkdir(parents=True)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_loading_definitions_imports_no_heavy_library():
    watched = HEAVY + ARRAY_LIBRARIES
    code = (
        "import json, sys, definitions; "
        f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_graph_has_every_lifecycle_asset_and_blocking_checks():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    # the repo's two pipelines (defs/loan_default, defs/loan_default_linear): every key carries
    # its pipeline's name
    assert keys == {
        f"{pipeline}/{name}"
        for pipeline in ("loan_default", "loan_default_linear")
        for name in (
            "raw_data",
            "validated_data",
            "features",
            "training_set",
            "candidate_model",
            "model_promotion",
            "batch_predictions",
            "drift_report",
            "model_performance",
            "online_features",  # both specs have online_features: true
        )
    }
    checks = {(c.asset_key.to_user_string(), c.name): c for c in graph.asset_check_keys}
    assert ("loan_default/validated_data", "great_expectations_suite") in checks
    validated = graph.get(asset_key("loan_default", "validated_data"))
    specs = {s.name: s for s in validated.assets_def.check_specs}
    assert specs["great_expectations_suite"].blocking
