"""Inference stage: batch_predictions scores a partition with the champion, features read
through Feast."""

from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, asset

from mlops_assets.data import partitioned
from mlops_assets.features import feature_refs
from mlops_assets.frames import Frame
from mlops_assets.keys import SHADOW_TAG, Meta, asset_ins, asset_key
from mlops_assets.ml.evaluation import score
from mlops_assets.spec import PipelineSpec
from mlops_resources.feast_store import FeastResource
from mlops_resources.mlflow_tracking import (
    CHALLENGER_ALIAS,
    MLFLOW_RETRY_POLICY,
    MLflowResource,
)
from mlops_resources.model_loading import load_registered_model

# Entity rows joined and scored at a time: batch_predictions holds a chunk's features and
# model inputs, not the day's (5,000,000 rows a day: 3.8x the day in memory as one chunk).
SCORING_CHUNK_ROWS = 1_000_000


def prediction_summary(predictions: Frame, spec: PipelineSpec) -> dict[str, object]:
    if spec.is_classification:
        counts = predictions["prediction"].value_counts().sort_index()
        summary: dict[str, object] = {"class_counts": {str(k): int(v) for k, v in counts.items()}}
        if "score" in predictions:
            summary["score_quantiles"] = {
                str(q): round(float(predictions["score"].quantile(q)), 4) for q in (0.1, 0.5, 0.9)
            }
        return summary
    return {str(k): round(float(v), 4) for k, v in predictions["prediction"].describe().items()}


def shadow_comparison(champion: Frame, challenger: Frame, spec: PipelineSpec) -> dict[str, float]:
    """How closely the challenger's output follows the champion's on the same rows."""
    if spec.is_classification:
        result = {"agreement": float((champion["prediction"] == challenger["prediction"]).mean())}
        if "score" in champion:
            result["mean_abs_score_difference"] = float(
                (champion["score"] - challenger["score"]).abs().mean()
            )
        return result
    return {
        "mean_abs_difference": float(
            (champion["prediction"] - challenger["prediction"]).abs().mean()
        )
    }


def record_shadow(
    context: AssetExecutionContext,
    mlflow: MLflowResource,
    spec: PipelineSpec,
    challenger: str,
    champion_output: Frame,
    challenger_output: Frame,
) -> dict[str, object]:
    """Compare the challenger's shadow output with the champion's and record the partition
    on the challenger version; the step's metadata about it."""
    name = spec.model_name
    comparison = shadow_comparison(champion_output, challenger_output, spec)
    scored = {p for p in mlflow.version_tags(name, challenger).get(SHADOW_TAG, "").split(",") if p}
    scored.add(context.partition_key)
    mlflow.tag_version(name, challenger, {SHADOW_TAG: ",".join(sorted(scored))})
    context.log.info(f"challenger v{challenger} shadow-scored: {comparison}")
    return {
        "challenger_version": challenger,
        "shadow_partitions": len(scored),
        "shadow_comparison": MetadataValue.json(comparison),
    }


def scored_rows(
    feast: FeastResource, spec: PipelineSpec, entities: Frame, models: list[object]
) -> tuple[Frame, list[Frame]]:
    """The entity rows' keys with the first model's output, and every model's output, from
    Feast's point-in-time join of the features, SCORING_CHUNK_ROWS entity rows at a time (so
    the join and the scoring hold a chunk, not the day)."""
    import pandas as pd

    keys: list[Frame] = []
    outputs: list[list[Frame]] = [[] for _ in models]
    for start in range(0, max(len(entities), 1), SCORING_CHUNK_ROWS):
        rows = feast.historical_features(
            entities.iloc[start : start + SCORING_CHUNK_ROWS], feature_refs(spec)
        )
        keys.append(rows[[spec.entity_key, spec.timestamp]])
        X = rows[spec.feature_names]
        for model, scored in zip(models, outputs, strict=True):
            scored.append(score(model, X, spec))
        del rows, X
    whole = [pd.concat(scored, ignore_index=True) for scored in outputs]
    return pd.concat([pd.concat(keys, ignore_index=True), whole[0]], axis=1), whole


def batch_predictions_args(spec: PipelineSpec, description: str, kinds: set[str]) -> dict:
    """The @asset arguments of batch_predictions: the day's validated rows in, after the
    promotion decision and the features; no output while there is no champion."""
    return {
        **partitioned(spec, "batch_predictions"),
        # only the keys: the features come from Feast
        "ins": asset_ins(
            spec, "validated_data", columns={"validated_data": [spec.entity_key, spec.timestamp]}
        ),
        "deps": [asset_key(spec, "model_promotion"), asset_key(spec, "features")],
        "output_required": False,
        "description": description + " Not materialized while no champion exists.",
        "kinds": kinds,
        "retry_policy": MLFLOW_RETRY_POLICY,
    }


def current_champion(
    context: AssetExecutionContext, mlflow: MLflowResource, spec: PipelineSpec
) -> str | None:
    """The champion version to score with, or None (logged) while there is none."""
    champion = mlflow.champion(spec.model_name)
    if champion is None:
        context.log.warning(
            f"no champion for {spec.model_name} yet: nothing scored for {context.partition_key}"
        )
    return champion


def build_batch_predictions(spec: PipelineSpec) -> AssetsDefinition:
    @asset(
        **batch_predictions_args(
            spec,
            "The partition's rows scored by the current champion (loaded from the registry by "
            "alias), with features read through Feast; a challenger, while one exists, is "
            "scored beside it (shadow).",
            {"mlflow", "feast", "pandas"},
        )
    )
    def batch_predictions(
        context: AssetExecutionContext,
        mlflow: MLflowResource,
        feast: FeastResource,
        validated_data: Frame,
    ):
        champion = current_champion(context, mlflow, spec)
        if champion is None:
            return
        name = spec.model_name
        challenger = mlflow.alias_version(name, CHALLENGER_ALIAS)  # scored beside it: shadow
        versions = [champion] if challenger is None else [champion, challenger]
        models = [load_registered_model(name, version) for version in versions]
        entities = validated_data[[spec.entity_key, spec.timestamp]]
        predictions, outputs = scored_rows(feast, spec, entities, models)
        predictions["model_version"] = champion
        shadow_metadata = {}
        if challenger is not None:
            predictions["challenger_prediction"] = outputs[1]["prediction"].to_numpy()
            shadow_metadata = record_shadow(
                context, mlflow, spec, challenger, outputs[0], outputs[1]
            )
        summary = prediction_summary(predictions, spec)
        context.log.info(f"scored {len(predictions)} rows with champion v{champion}")
        yield Output(
            predictions,
            metadata={
                Meta.ROW_COUNT: len(predictions),
                Meta.CHAMPION_VERSION: champion,
                "prediction_distribution": MetadataValue.json(summary),
                "mlflow_model_version": MetadataValue.url(
                    mlflow.model_version_url(spec.model_name, champion)
                ),
                **shadow_metadata,
            },
        )

    return batch_predictions
