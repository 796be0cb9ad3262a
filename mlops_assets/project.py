"""A Dagster project of the suite: the pipelines in its defs folder (one TabularMLPipeline per
defs.yaml) with the active profile's resources, shared by all of them. This repo's
definitions.py is such a project; so is a user's (docs/use-in-your-project.md).

$MLOPS_CONFIG names a single spec file instead: that pipeline alone, as before the defs folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import Definitions

    from mlops_assets.spec import PipelineSpec

CONFIG_ENV = "MLOPS_CONFIG"


def dg_project_root(path: Path) -> Path | None:
    """The folder of the nearest dg.toml or pyproject.toml at or above `path`, if it declares a
    dg project ([project] in dg.toml, [tool.dg.project] in pyproject.toml)."""
    import tomllib

    for folder in [path.resolve(), *path.resolve().parents]:
        for name, section in (("dg.toml", ("project",)), ("pyproject.toml", ("tool", "dg"))):
            config = folder / name
            if not config.is_file():
                continue
            table = tomllib.loads(config.read_text())
            for key in section:
                table = table.get(key, {})
            return folder if name == "dg.toml" or "project" in table else None
    return None


def importable(root: Path) -> None:
    """Put the project's folder on sys.path, as Dagster's python_file loader does with its
    working directory, so that a defs module that is not installed (this repo's `defs`)
    imports when the CLI runs from elsewhere."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def project_definitions(path_within_project: Path) -> Definitions:
    """The code location: $MLOPS_CONFIG's spec if set, else every pipeline of the project's
    defs folder; with the active profile's resources (mlops_resources/profiles.py).

    The defs folder is built as `dagster.load_from_defs_folder` builds it, without the listing
    of every installed plugin's component types that it adds to the metadata (for the UI's
    component picker): that listing imports each plugin's components (dagster-aws's took
    ~0.6 s here, a second `import dagster`), in the webserver, the daemon and every step
    process. A user's project may call load_from_defs_folder as usual."""
    from dagster import ComponentTree, Definitions

    from mlops_resources.profiles import profile_resources

    if os.environ.get(CONFIG_ENV):
        from mlops_assets.pipeline import build_definitions
        from mlops_assets.spec import load_spec

        return build_definitions(load_spec())
    tree = ComponentTree.for_project(path_within_project=path_within_project)
    return Definitions.merge(
        tree.build_defs_at_path(tree.defs_module_path),
        Definitions(resources=profile_resources()),
    )


def project_specs(path_within_project: Path) -> dict[str, PipelineSpec]:
    """The pipeline specs of the project's defs folder, by name (its templates rendered and
    relative paths resolved as when Dagster loads it); {} when there is no dg project."""
    from dagster import ComponentTree

    from mlops_assets.component import TabularMLPipeline

    root = dg_project_root(path_within_project)
    if root is None:
        return {}
    importable(root)
    tree = ComponentTree.for_project(path_within_project=path_within_project)
    specs = [c.spec for c in tree.get_all_components(of_type=TabularMLPipeline)]
    return {spec.name: spec for spec in specs}
