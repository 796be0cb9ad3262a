"""The Dagster side of the suite. `mlops_assets.TabularMLPipeline` is the Component a Dagster
project declares once per model (`type: mlops_assets.TabularMLPipeline` in a defs.yaml; see
docs/use-in-your-project.md). It is imported on first use, so that importing a submodule
(mlops_assets.spec, ...) does not import Dagster's component machinery."""

from typing import Any

__all__ = ["TabularMLPipeline"]


def __getattr__(name: str) -> Any:
    if name == "TabularMLPipeline":
        from mlops_assets.component import TabularMLPipeline

        return TabularMLPipeline
    raise AttributeError(f"module 'mlops_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
