"""An asset's code version covers the code it calls: changing the source of a module that
candidate_model calls (not only mlops_assets/training.py) gives it a new code version."""

import shutil

from mlops_assets.code_versions import with_code_versions
from mlops_assets.keys import asset_key
from mlops_assets.ml.governance import lineage
from mlops_assets.pipeline import build_assets
from mlops_assets.spec import load_spec


def test_candidate_model_code_version_covers_the_modules_it_calls(tmp_path, monkeypatch):
    spec = load_spec()
    assets = with_code_versions(spec, build_assets(spec))
    versions = {k: v for a in assets for k, v in a.code_versions_by_key.items()}
    own = "mlops_assets.training"
    before = lineage.code_version(spec, "candidate_model", own_module=own)
    assert versions[asset_key(spec, "candidate_model")] == before
    files = {
        p.relative_to(lineage.ROOT).as_posix()
        for p in lineage.source_files([own, *lineage.code_modules(spec, "candidate_model")])
    }
    assert {"mlops_assets/ml/evaluation.py", "mlops_assets/ml/model_kinds.py"} <= files

    for package in ("mlops_assets", "mlops_resources"):
        shutil.copytree(lineage.ROOT / package, tmp_path / package)
    monkeypatch.setattr(lineage, "ROOT", tmp_path)
    assert lineage.code_version(spec, "candidate_model", own_module=own) == before
    called = tmp_path / "mlops_assets" / "ml" / "evaluation.py"
    called.write_text(called.read_text() + "\n# a change in code candidate_model calls\n")
    assert lineage.code_version(spec, "candidate_model", own_module=own) != before
