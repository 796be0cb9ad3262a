"""The suite as a Dagster Component: one ML pipeline per `defs.yaml`.

A Dagster project declares each model in its own folder of the defs module::

    defs/churn/defs.yaml
        type: mlops_assets.TabularMLPipeline
        attributes:            # the pipeline spec (docs/configuration.md)
          name: churn
          source: {path: data/churn_{date}.parquet}   # relative: from this folder
          ...

`dg scaffold defs mlops_assets.TabularMLPipeline churn` writes a commented starter spec.
The component builds the pipeline's assets, checks, jobs, sensors and schedule (all named after
the pipeline, so many models share one code location) and no resources: the project's
definitions.py adds the shared ones once (mlops_resources.profiles.profile_resources).

The attributes are the pipeline spec itself. They are checked twice: against a JSON schema
derived from PipelineSpec (what `dg check yaml` and editors use; every value may also be a
`{{ env.X }}` template, and a slice may be a bare column name), then, once templates are
rendered, by PipelineSpec itself, whose errors name the defs.yaml file and the key.
"""

from __future__ import annotations

import types
from datetime import date
from enum import Enum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from dagster import Component, ComponentTypeSpec, Scaffolder, ScaffoldRequest, scaffold_with
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from mlops_assets.spec import PipelineSpec, SliceSpec, SpecError, StrictModel, format_errors

if TYPE_CHECKING:
    from dagster import ComponentLoadContext, Definitions

TEMPLATE_MARKERS = ("{{", "{%")


def loose_type(annotation: Any) -> Any:
    """What the attributes schema accepts where the spec has `annotation`: a spec section
    becomes its attributes model, containers keep their shape, and a leaf value may also be a
    string (a template such as `{{ env.WINDOW_DAYS }}`, checked once rendered)."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        model = attributes_model(annotation)
        return model | str if annotation is SliceSpec else model  # `- region` is a slice
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return Union[tuple(loose_type(a) for a in args)]  # noqa: UP007 (built at run time)
    if origin is list:
        return list[loose_type(args[0])]
    if origin is dict:
        return dict[args[0], loose_type(args[1])]
    if annotation in (str, Any) or annotation is type(None):
        return annotation
    if origin is Literal or annotation in (int, float, bool, date) or _is_enum(annotation):
        return annotation | str
    return annotation


def _is_enum(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Enum)


def loose_field(info: FieldInfo) -> tuple[Any, FieldInfo]:
    """The field with its type loosened and its constraints left to PipelineSpec."""
    kwargs: dict[str, Any] = {"description": info.description}
    if info.default_factory is not None:
        kwargs["default_factory"] = info.default_factory
    elif not info.is_required():
        kwargs["default"] = info.default
    return loose_type(info.annotation), Field(**kwargs)


@cache
def attributes_model(section: type[StrictModel]) -> type[BaseModel]:
    """The attributes model of one spec section (PipelineSpec itself for the top level)."""
    fields = {
        name: loose_field(info)
        for name, info in section.model_fields.items()
        if not info.exclude  # spec_path: set by the loader, not written by people
    }
    if section is PipelineSpec:  # defaults to the folder's name
        fields["name"] = (str | None, Field(default=None, description=_NAME_HELP))
    return create_model(
        f"{section.__name__}Attributes",
        __config__=ConfigDict(extra="forbid"),
        __doc__=section.__doc__,
        **fields,
    )


_NAME_HELP = (
    "The pipeline's name (letters, digits, _): the prefix of its asset keys and of its job, "
    "sensor and schedule names. Default: the name of the folder holding this defs.yaml."
)


def render_templates(value: Any, context: Any) -> Any:
    """`value` with each string that holds a template rendered; other strings stay as written
    (Dagster's renderer would turn a plain "0" into the number 0)."""
    if isinstance(value, dict):
        return {k: render_templates(v, context.at_path(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [render_templates(v, context.at_path(i)) for i, v in enumerate(value)]
    if isinstance(value, str) and any(marker in value for marker in TEMPLATE_MARKERS):
        return context.resolve_value(value)
    return value


def spec_from_attributes(raw: dict[str, Any], defs_yaml: Path) -> PipelineSpec:
    """The PipelineSpec declared by `raw` (rendered attributes) in `defs_yaml`: relative source
    paths are taken from its folder, and the name defaults to the folder's."""
    raw = {"name": defs_yaml.parent.name, **{k: v for k, v in raw.items() if v is not None}}
    try:
        return PipelineSpec.model_validate({**raw, "spec_path": defs_yaml.resolve()})
    except ValidationError as exc:
        raise SpecError(format_errors(defs_yaml, exc, prefix="attributes")) from None


class TabularMLPipelineScaffolder(Scaffolder):
    """`dg scaffold defs mlops_assets.TabularMLPipeline <name>`: a defs.yaml whose attributes
    are a commented starter spec to edit."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        text = STARTER_SPEC.format(type_name=request.type_name, name=request.target_path.name)
        (request.target_path / "defs.yaml").write_text(text)


@scaffold_with(TabularMLPipelineScaffolder)
class TabularMLPipeline(Component):
    """A governed, self-retraining ML pipeline for one tabular, time-stamped dataset.

    Attributes: the pipeline spec (docs/configuration.md). Builds the assets (raw_data ...
    model_performance, keyed `<name>/<asset>` in group `<name>`), their checks, the jobs
    `<name>__ingest|daily|retrain|label_feedback|lifecycle|rollback|retire_model`, the sensors
    `<name>__new_data_sensor|drift_sensor` and the schedule `<name>__nightly_training`. It
    needs the resources mlflow, feast, gx, torch_executor, evidently, reports and io_manager
    from the project's definitions (mlops_resources.profiles.profile_resources()).

    Example, a project's definitions.py::

        from pathlib import Path

        import dagster as dg
        from mlops_resources.profiles import profile_resources

        defs = dg.Definitions.merge(
            dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
            dg.Definitions(resources=profile_resources()),
        )
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    @classmethod
    def get_spec(cls) -> ComponentTypeSpec:
        return ComponentTypeSpec(
            description="A governed, self-retraining ML pipeline for one tabular dataset: "
            "ingest, Great Expectations checks, Feast features, MLflow training and gate, "
            "batch scoring, Evidently drift, sensors that retrain and roll back.",
            tags=["ml", "mlflow", "feast", "great_expectations", "evidently"],
            produces=["asset", "asset_check", "job", "sensor", "schedule"],
        )

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return attributes_model(PipelineSpec)

    @classmethod
    def load(cls, attributes: BaseModel | None, context: ComponentLoadContext) -> TabularMLPipeline:
        from dagster.components.resolved.scopes import LoadContextScope

        raw = attributes.model_dump(exclude_unset=True) if attributes is not None else {}
        # the scope Resolvable components get: env, dg, datetime and `context` (project_root...)
        scoped = context.with_rendering_scope({"context": LoadContextScope(context)})
        rendered = render_templates(raw, scoped.resolution_context.at_path("attributes"))
        return cls(spec_from_attributes(rendered, context.path / "defs.yaml"))

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        from mlops_assets.pipeline import build_pipeline_definitions

        return build_pipeline_definitions(self.spec)


STARTER_SPEC = """\
# A pipeline of the dagster-mlops-suite: edit the attributes (the pipeline spec) for your data.
# Every key is described in docs/configuration.md; `dg check defs` validates this file.
type: {type_name}

attributes:
  name: {name}  # prefix of the asset keys ({name}/raw_data) and job names ({name}__daily)
  description: What the model predicts and for whom.
  source:
    # One file per day ({{date}} = YYYY-MM-DD), CSV or Parquet; relative to this folder.
    # A template such as "{{{{ env.DATA_DIR }}}}/{name}_{{date}}.parquet" works too.
    path: data/{name}_{{date}}.csv
  entity_key: customer_id  # the entity the features describe (Feast entity)
  timestamp: event_timestamp  # when each row happened (UTC)
  label: churned  # the column to predict
  task: binary_classification  # or multiclass_classification, regression
  classes: ["0", "1"]
  partitions:
    start: 2024-01-01  # first daily partition
  features:
    - {{name: tenure_months, type: numeric, min: 0}}
    - {{name: monthly_charges, type: numeric, min: 0}}
    - {{name: plan, type: categorical, allowed_values: [basic, plus, premium]}}
  model:
    kind: hist_gradient_boosting  # random_forest, linear, torch_mlp
    training_window_days: 14
    holdout_days: 3
  gate:  # no thresholds at all: nothing is ever promoted
    value_thresholds:
      roc_auc: {{min: 0.7}}
    change_thresholds:
      roc_auc: {{min_absolute_change: -0.005}}  # no worse than the champion beyond 0.005
  monitoring:
    performance:
      label_delay_days: 1  # labels arrive a day after their events
      max_degradation: {{roc_auc: 0.05}}
  governance:
    intended_use: Who may use the predictions, and for what.
    slices: [plan]  # metrics per category (a numeric column needs bins)
"""
