"""Loading a spec file into a PipelineSpec, and the checks that need the estimator."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from mlops_assets.spec.base import DEMO_SPEC_PATH, SpecError
from mlops_assets.spec.pipeline import PipelineSpec
from mlops_assets.spec.yaml_text import DuplicateKeyError, parse_yaml, read_text


def format_errors(path: Path, error: ValidationError, prefix: str = "") -> str:
    """One line per error: the key (under `prefix`, e.g. `attributes` in a defs.yaml) and the
    rule, after the file's name."""
    lines = [f"invalid pipeline spec {path}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "") or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_spec(path: str | os.PathLike[str] | None = None) -> PipelineSpec:
    """Load a spec from `path`, else $MLOPS_CONFIG, else the bundled demo spec."""
    spec_path = Path(path or os.environ.get("MLOPS_CONFIG") or DEMO_SPEC_PATH).expanduser()
    if not spec_path.is_file():
        raise SpecError(f"pipeline spec not found: {spec_path}")
    text = read_text(spec_path)
    try:
        raw = parse_yaml(text)
    except DuplicateKeyError as exc:
        raise SpecError(f"invalid pipeline spec {spec_path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid pipeline spec {spec_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline spec {spec_path}: expected a mapping at the top level")
    try:
        return PipelineSpec.model_validate({**raw, "spec_path": spec_path.resolve()})
    except ValidationError as exc:
        raise SpecError(format_errors(spec_path, exc)) from None


def check_model_params(spec: PipelineSpec) -> None:
    """Refuse `model.params` the model kind's estimator does not take, or values it rejects,
    naming the spec file, the key and the valid names.

    Not part of load_spec: it imports scikit-learn, and definitions.py must stay light to
    import. The CLI calls it right after load_spec, before anything runs. torch_mlp takes no
    params: its hyperparameters are the torch_executor resource's fields.
    """
    params = spec.model.params
    if not params:
        return
    header = f"invalid pipeline spec {spec.spec_path}:"
    if spec.model.kind == "torch_mlp":
        from mlops_resources.torch_executor import TorchExecutorResource

        raise SpecError(
            f"{header}\n  - model.params: torch_mlp takes no params (got {sorted(params)}); "
            "set its hyperparameters on the torch_executor resource instead, one of "
            f"{sorted(TorchExecutorResource.model_fields)}"
        )
    from sklearn.pipeline import Pipeline

    from mlops_assets.ml.estimators import build_estimator

    bare = spec.model_copy(update={"model": spec.model.model_copy(update={"params": {}})})
    built = build_estimator(bare)
    estimator = (built if isinstance(built, Pipeline) else built.estimator).named_steps["model"]
    cls = type(estimator).__name__
    valid = sorted(estimator.get_params(deep=False))
    unknown = [name for name in params if name not in valid]
    if unknown:
        lines = [header]
        lowered = {v.lower(): v for v in valid}
        for name in unknown:
            close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
            hint = f" (did you mean '{lowered[close[0]]}'?)" if close else ""
            lines.append(f"  - model.params.{name}: not a parameter of {cls}{hint}; valid: {valid}")
        raise SpecError("\n".join(lines))
    try:
        estimator.set_params(**params)
        estimator._validate_params()  # what fit() checks first (scikit-learn >= 1.2)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{header}\n  - model.params: {exc}") from None
