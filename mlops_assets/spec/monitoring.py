"""The monitoring and serving sections of the spec: drift tests, performance on labels,
the retraining automation and the online endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mlops_assets.spec.base import StrictModel

# Evidently drift methods: p-value tests flag drift below the threshold, distances above it.
DRIFT_METHODS = {
    "ks",
    "chisquare",
    "z",
    "anderson",
    "fisher_exact",
    "cramer_von_mises",
    "g_test",
    "mannw",
    "t_test",
    "empirical_mmd",
    "es",
    "epps_singleton",
    "wasserstein",
    "kl_div",
    "psi",
    "jensenshannon",
    "hellinger",
    "ed",
    "TVD",
}
PREDICTION_COLUMN = "prediction"


class DriftTestSpec(StrictModel):
    """An Evidently drift method and its threshold (None: Evidently's default for the method)."""

    method: str
    threshold: float | None = Field(default=None, gt=0)

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        if method not in DRIFT_METHODS:
            raise ValueError(f"unknown drift method {method!r}; known: {sorted(DRIFT_METHODS)}")
        return method


class DriftSpec(StrictModel):
    """Data and prediction drift against the champion's recorded training reference."""

    numeric: DriftTestSpec = DriftTestSpec(method="wasserstein", threshold=0.1)
    categorical: DriftTestSpec = DriftTestSpec(method="jensenshannon", threshold=0.1)
    columns: dict[str, DriftTestSpec] = Field(
        default_factory=dict, description="Per-column overrides (features or `prediction`)."
    )
    drift_share: float = Field(
        default=0.3, gt=0, le=1, description="Share of drifted features that flags the day."
    )
    severity: Literal["WARN", "ERROR"] = "WARN"
    sample_size: int = Field(
        default=20_000, ge=100, description="Max rows per side; larger inputs are sampled."
    )
    reference_size: int = Field(
        default=10_000, ge=100, description="Rows of training data recorded with each model."
    )


class PerformanceSpec(StrictModel):
    """The champion on labelled data, once labels have arrived."""

    label_delay_days: int = Field(default=1, ge=0)
    max_degradation: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric: how much worse than the training-time holdout is tolerated.",
    )
    severity: Literal["WARN", "ERROR"] = "ERROR"
    rollback_margin: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric: roll back when the champion is worse than the version it "
        "replaced by more than this on the same labelled rows.",
    )


class MonitoringSpec(StrictModel):
    """Monitoring thresholds and the automation that acts on them."""

    drift: DriftSpec = Field(default_factory=DriftSpec)
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec)
    retrain_cooldown_days: int = Field(
        default=3, ge=0, description="No new sensor-triggered retraining within this many days."
    )
    followup_days: int = Field(
        default=4,
        ge=0,
        description="After a change-triggered retraining that moved the champion, retrain once "
        "more for each newly labelled day up to this many days after the change (the window "
        "since the change grows with its data; the gate still decides). 0: no follow-ups.",
    )
    nightly_training: bool = Field(default=False, description="Start the nightly schedule on.")
    nightly_cron_hour: int = Field(default=2, ge=0, le=23)


class ServingSpec(StrictModel):
    """The online endpoint (`python -m mlops_assets serve`; docs/serving.md)."""

    refresh_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the server reads the `champion` and `challenger` aliases; a "
        "promotion or rollback serves within this interval (plus the new version's load time).",
    )
    canary_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of entities (sticky per entity key, by hash) answered by the "
        "`challenger` while one exists; the rest get the champion. 0: the challenger only "
        "shadow-scores. Needs monitoring.performance.rollback_margin (the automatic stop).",
    )
    canary_min_labelled: int = Field(
        default=200,
        ge=1,
        description="Labelled rows (POST /feedback) scored by both versions before the canary's "
        "live metric is compared with the champion's.",
    )
    max_batch: int = Field(default=1000, ge=1, description="Most entities in one request.")
    request_log: bool = Field(
        default=True,
        description="Log every answered row (and the other version's shadow prediction) to "
        "Parquet under $MLOPS_HOME/serving/<pipeline>/requests/<day>/.",
    )
    log_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Answered batches waiting for the shadow scorer and the request log; when "
        "full, new ones are dropped from the log (rows counted in /metrics), never delayed.",
    )
    monitor_online: bool = Field(
        default=False,
        description="Add the online_predictions asset (a day of the request log) and score it "
        "on the day's labels in model_performance beside batch_predictions.",
    )
