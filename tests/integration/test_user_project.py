"""A fresh Dagster project that uses the suite the way a user's does (docs/use-in-your-project.md):
the suite pip-installed from this repo into the project's own venv, a pyproject.toml with
[tool.dg], a definitions.py with load_from_defs_folder and the shared resources, two models
added with `dg scaffold defs mlops_assets.TabularMLPipeline <name>` and edited; then
`dg list components`, `dg check defs`, `dg list defs` and `dg launch` of both lifecycles.

The venv: a full install of the suite's dependencies takes minutes (torch, mlflow, feast, ...),
so the project's venv sees this repo's .venv packages through a .pth file (what
`--system-site-packages` would do if .venv were a system Python) and gets the suite itself
from `pip install --no-deps` of this repo: a built wheel, not the editable checkout, so the
`dagster_dg_cli.registry_modules` entry point and the package data come from the install.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from datetime import date
from pathlib import Path

import pytest
import yaml

from mlops_assets.demo_data import write_demo_data
from mlops_assets.spec import DEMO_SPEC_PATH
from tests.integration.conftest import local_env

REPO = Path(__file__).resolve().parents[2]
DAYS = [date(2024, 1, 1), date(2024, 1, 2)]  # one ingest day, then the lifecycle

PYPROJECT = """\
[project]
name = "loans-project"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["dagster-mlops-suite"]

[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[tool.setuptools.packages.find]
where = ["src"]

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "loans_project"
"""

DEFINITIONS = """\
from pathlib import Path

import dagster as dg
from mlops_resources.profiles import profile_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=profile_resources()),
    )
"""


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def make_venv(project: Path, env: dict[str, str]) -> Path:
    """project/.venv (where dg looks for it), seeing this repo's .venv packages, with the
    suite installed into it from this repo, and the project itself (editable, as uv would)."""
    run([sys.executable, "-m", "venv", str(project / ".venv")], project, env)
    python = project / ".venv" / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], project, env
    )
    (Path(purelib.strip()) / "suite_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"]  # setuptools: isolated
    # from a copy of the sources: pip builds in the source tree (build/), not in this repo's
    source = project.parent / "suite-source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "definitions.py"):
        shutil.copy(REPO / name, source / name)
    for package in ("mlops_assets", "mlops_resources"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    run([*pip, "--ignore-installed", str(source)], project, env)
    run([*pip, "-e", str(project)], project, env)
    for script in ("dg", "dagster"):  # console scripts of packages seen through the .pth
        source = Path(sys.executable).parent / script
        text = source.read_text().split("\n", 1)[1]
        (project / ".venv" / "bin" / script).write_text(f"#!{python}\n{text}")
        (project / ".venv" / "bin" / script).chmod(0o755)
    return python


@pytest.fixture(scope="module")
def user_project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("user_project")
    project = root / "loans-project"
    package = project / "src" / "loans_project"
    (package / "defs").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(DEFINITIONS)
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # The embedded defaults, not the session's production profile (local_env drops it).
    env = {k: v for k, v in local_env(root).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        DAGSTER_HOME=str(root / "dagster"),
        VIRTUAL_ENV=str(project / ".venv"),
        PATH=f"{project / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    python = make_venv(project, env)
    return {"project": project, "env": env, "python": python, "defs": package / "defs"}


def dg(user_project: dict, *args: str) -> str:
    dg_bin = str(user_project["project"] / ".venv" / "bin" / "dg")
    return run([dg_bin, *args], user_project["project"], user_project["env"])


def edit(defs_yaml: Path, attributes: dict) -> None:
    """Replace the scaffolded starter spec's attributes, keeping its `type:`."""
    scaffolded = yaml.safe_load(defs_yaml.read_text())
    defs_yaml.write_text(yaml.safe_dump({"type": scaffolded["type"], "attributes": attributes}))


@pytest.mark.timeout(1800)  # a venv, a wheel build, six dg commands and four runs
def test_a_user_project_with_two_models(user_project):
    defs = user_project["defs"]
    components = json.loads(dg(user_project, "list", "components", "--json"))["items"]
    assert "mlops_assets.TabularMLPipeline" in {c["key"] for c in components}

    for name in ("loans", "loans_linear"):
        dg(user_project, "scaffold", "defs", "mlops_assets.TabularMLPipeline", name)
        assert "# " in (defs / name / "defs.yaml").read_text()  # the commented starter spec
        write_demo_data(defs / name / "data", start=DAYS[0], days=len(DAYS), rows_per_day=300)
    window = {"training_window_days": 2, "holdout_days": 1, "window": {"policy": "sliding"}}
    performance = {"label_delay_days": 0}
    demo = yaml.safe_load(DEMO_SPEC_PATH.read_text())
    edit(
        defs / "loans" / "defs.yaml",
        {
            **demo,
            "name": "loans",
            "source": {"path": "data/loans_{date}.parquet"},  # relative to its defs.yaml
            "model": {**demo["model"], **window},
            "gate": {"value_thresholds": {"roc_auc": {"min": 0.5}}},
            "monitoring": {"performance": performance},
            "governance": {"slices": ["region"]},
        },
    )
    edit(
        defs / "loans_linear" / "defs.yaml",
        {
            "source": {
                "path": "{{ context.project_root }}/src/loans_project/defs/loans_linear/"
                "data/loans_{date}.parquet"
            },
            "entity_key": "customer_id",
            "timestamp": "event_timestamp",
            "label": "defaulted",
            "task": "binary_classification",
            "classes": ["0", "1"],
            "allow_extra_columns": True,
            "partitions": {"start": "2024-01-01"},
            "features": [
                {"name": "income", "type": "numeric", "min": 0},
                {"name": "credit_score", "type": "numeric", "min": 300, "max": 850},
                {"name": "home_ownership", "type": "categorical"},
            ],
            "model": {"kind": "linear", **window},
            "gate": {"value_thresholds": {"roc_auc": {"min": 0.5}}},
            "monitoring": {"performance": performance},
        },
    )

    dg(user_project, "check", "defs")
    listed = json.loads(dg(user_project, "list", "defs", "--json"))
    assets = {asset["asset_key"] for asset in listed["assets"]}
    for name in ("loans", "loans_linear"):  # the second one is named after its folder
        assert {f"{name}/raw_data", f"{name}/candidate_model", f"{name}/drift_report"} <= assets
    jobs = {job["name"] for job in listed["jobs"]}
    assert {"loans__lifecycle", "loans_linear__lifecycle"} <= jobs

    # Steps in the launching process: the default multiprocess executor starts a Python (and
    # imports the suite) per step, minutes per job on a loaded 2-core machine.
    in_process = ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]
    launched = []
    for name in ("loans", "loans_linear"):
        for job, day in (("ingest", DAYS[0]), ("lifecycle", DAYS[1])):
            launched.append(
                dg(
                    user_project,
                    "launch",
                    "--job",
                    f"{name}__{job}",
                    "--partition",
                    day.isoformat(),
                    *in_process,
                )
            )
    champions = run(
        [
            str(user_project["python"]),
            "-c",
            "import json; from mlops_resources.mlflow_tracking import MLflowResource as M; "
            "print(json.dumps({n: M().champion(f'{n}_model') for n in ('loans', 'loans_linear')}))",
        ],
        user_project["project"],
        user_project["env"],
    )
    assert json.loads(champions.strip().splitlines()[-1]) == {
        "loans": "1",
        "loans_linear": "1",
    }, "\n".join(line for out in launched for line in out.splitlines() if "gate" in line)[-4000:]
