"""Loading registered models without running code from their artifacts.

The suite decides the format itself from what it writes: scikit-learn models as skops files whose
object types are all scikit-learn's (plus numpy dtypes), torch models as a JSON spec plus a
weights-only state_dict. An artifact in any other format (a pickle or cloudpickle, an MLmodel
edited to say so, a skops file naming a foreign type) is refused before a byte of it is
deserialized. MLflow's own loaders are not used for scikit-learn: they follow the artifact's
`serialization_format` and `skops_trusted_types`, which whoever can write the artifact controls.

    from mlops_resources.model_loading import load_registered_model

    model = load_registered_model("loan_default", "3")   # skops or torch, never a pickle
    model.predict(frame)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKOPS_FORMAT = "skops"
# Types a skops file of the suite may hold beyond skops' defaults: scikit-learn's own classes
# (trees, calibrators, histogram-GBM predictors) and numpy dtypes. Nothing else is trusted.
TRUSTED_TYPE_PREFIXES = ("sklearn.",)
TRUSTED_TYPES = frozenset({"numpy.dtype"})


class UnsafeModelError(ValueError):
    """A model artifact is not in a format the suite wrote: refused without loading it."""


def load_registered_model(name: str, version: str | int) -> Any:
    """Load version `version` of registered model `name` (the current MLflow registry)."""
    return load_model_uri(f"models:/{name}/{version}")


def load_model_uri(uri: str) -> Any:
    """Download a logged model and load it in the format the suite wrote, refusing others."""
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavors = Model.load(str(local)).flavors
    if "sklearn" in flavors:
        return load_skops_model(local, flavors["sklearn"], uri)
    if "pytorch" in flavors:
        from mlops_resources.torch_executor import load_torch_model

        return load_torch_model(uri)
    raise UnsafeModelError(f"{uri}: unsupported model flavors {sorted(flavors)}")


def load_skops_model(folder: Path, flavor: dict[str, Any], uri: str) -> Any:
    """The scikit-learn flavor's model file, loaded by skops with the suite's own trust list."""
    import skops.io as sio

    fmt = flavor.get("serialization_format")
    if fmt != SKOPS_FORMAT:
        raise UnsafeModelError(
            f"{uri}: serialization_format {fmt!r} is refused; the suite writes and loads only "
            f"{SKOPS_FORMAT!r} (nothing from an artifact is unpickled)"
        )
    path = (folder / str(flavor.get("pickled_model", ""))).resolve()
    if not path.is_file() or not path.is_relative_to(folder.resolve()):
        raise UnsafeModelError(f"{uri}: model file {flavor.get('pickled_model')!r} not found")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a skops zip: a pickle renamed, a truncated file
        raise UnsafeModelError(f"{uri}: {path.name} is not a skops file ({exc})") from exc
    foreign = [t for t in untrusted if not is_trusted_type(t)]
    if foreign:
        raise UnsafeModelError(
            f"{uri}: {path.name} holds untrusted types {foreign}: refused without loading"
        )
    return sio.load(path, trusted=untrusted)


def is_trusted_type(name: str) -> bool:
    return name in TRUSTED_TYPES or name.startswith(TRUSTED_TYPE_PREFIXES)
