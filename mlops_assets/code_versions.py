"""Code versions of a pipeline's assets: each asset's code version hashes the source of the code
it runs (its module and the suite modules it calls, mlops_assets.ml.governance.lineage
.CODE_BY_ASSET) and the spec keys it reads, so Dagster marks it and everything downstream stale
when any of them changes."""

from typing import Any

from dagster import AssetsDefinition

from mlops_assets.ml.governance.lineage import code_version
from mlops_assets.spec import PipelineSpec


def with_code_versions(spec: PipelineSpec, assets: list[AssetsDefinition]) -> list[Any]:
    """Give every asset a code version (its module, the code it calls, its spec keys), so
    Dagster derives data versions from it and marks a model stale when its code, its spec
    section or an upstream data version changed."""

    def versioned(asset_def: AssetsDefinition) -> AssetsDefinition:
        module = asset_def.op.compute_fn.decorated_fn.__module__
        return asset_def.map_asset_specs(
            lambda s: s.replace_attributes(
                code_version=code_version(spec, s.key.path[-1], own_module=module)
            )
        )

    return [versioned(a) for a in assets]
