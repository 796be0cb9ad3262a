"""The canary's live metric on labelled traffic, and its automatic, audited stop.

While a challenger exists, every answered row carries both versions' predictions (one answered,
the other scored off the response path; see request_log). Labels sent back (POST /feedback,
by request id and entity key) pair with them, so the champion and the challenger are judged on
the same labelled rows. Once `serving.canary_min_labelled` rows are labelled, a canary whose
metric is worse than the champion's by more than `monitoring.performance.rollback_margin` is
stopped: this process stops routing entities to it at once, and the `stop_canary` job removes
the `challenger` alias (compare-and-set on the version, under the promotion lease) and records
the audit the way a rollback does (governance.record_audit: MLflow version tags
`mlops.canary_stopped_{by,at,run_id,reason}` and the Dagster run's `mlops/action` tags).

No `from __future__ import annotations`: Dagster reads the op's config class from its
annotation at run time.
"""

import logging
import math
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dagster import Config, OpExecutionContext, job, mem_io_manager, op
from pydantic import Field

from mlops_assets.keys import TRIGGER_TAG, scoped_name
from mlops_assets.spec import METRICS_BY_TASK, metric_gain
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, MLflowResource

if TYPE_CHECKING:
    from mlops_assets.serving.metrics import ServingMetrics
    from mlops_assets.serving.scoring import Outputs
    from mlops_assets.spec import PipelineSpec

log = logging.getLogger("mlops_assets.serving")

STOP_CANARY_JOB = "stop_canary"
STOP_CANARY_OP = "stop_canary_version"
CANARY_TRIGGER = "canary_monitor"
# Served rows remembered for their labels (oldest forgotten first).
MAX_AWAITING_LABELS = 200_000


class CanaryStopConfig(Config):
    version: str = Field(description="The challenger version to stop (compare-and-set).")
    reason: str = Field(description="Why: the live metrics of both versions.")


def build_stop_canary_job(spec: "PipelineSpec", mlflow: MLflowResource) -> Any:
    """`<pipeline>__stop_canary`: remove the `challenger` alias if it still names the version,
    and audit it (governance.record_audit, action `canary_stop`)."""
    from mlops_assets.governance import record_audit

    @op(name=scoped_name(spec, STOP_CANARY_OP), description="Stop a canary (compare-and-set).")
    def stop_canary_op(
        context: OpExecutionContext, config: CanaryStopConfig, mlflow: MLflowResource
    ) -> dict[str, str]:
        name = spec.model_name
        with mlflow.promotion_lock(name):
            current = mlflow.alias_version(name, CHALLENGER_ALIAS)
            if current != config.version:
                message = (
                    f"skipped: the canary of v{config.version} was to be stopped, but the "
                    f"challenger of {name} is now {f'v{current}' if current else 'none'}"
                )
                context.log.info(message)
                return {"skipped": "true", "message": message, "version": config.version}
            mlflow.delete_alias(name, CHALLENGER_ALIAS)
        audit = record_audit(context, mlflow, name, config.version, "canary_stop", config.reason)
        context.log.info(f"canary of {name} v{config.version} stopped: {config.reason}")
        context.add_output_metadata({"model": name, "version": config.version, **audit})
        return {"skipped": "false", "version": config.version, **audit}

    @job(
        name=scoped_name(spec, STOP_CANARY_JOB),
        description="Stop a canary whose live metric fell below the champion's: the "
        "`challenger` alias is removed, recording who, when and why.",
        # The op's small result stays in memory: nothing is written under DAGSTER_HOME.
        resource_defs={"mlflow": mlflow, "io_manager": mem_io_manager},
    )
    def stop_canary():
        stop_canary_op()

    return stop_canary


def run_stop_canary(
    spec: "PipelineSpec", mlflow: MLflowResource, version: str, reason: str
) -> dict[str, str]:
    """Run the stop job on the Dagster instance ($DAGSTER_HOME), so the stop is a run with its
    audit tags like a rollback. Raises when the run fails."""
    from dagster import DagsterInstance

    result = build_stop_canary_job(spec, mlflow).execute_in_process(
        run_config={
            "ops": {
                scoped_name(spec, STOP_CANARY_OP): {
                    "config": {"version": version, "reason": reason}
                }
            }
        },
        instance=DagsterInstance.get(),
        tags={TRIGGER_TAG: CANARY_TRIGGER, "user": f"{CANARY_TRIGGER}@{socket.gethostname()}"},
        raise_on_error=False,
    )
    if not result.success:
        raise RuntimeError(f"stop_canary run {result.run_id} failed")
    return {"run_id": result.run_id, **result.output_for_node(scoped_name(spec, STOP_CANARY_OP))}


class CanaryMonitor:
    """Both versions' predictions of served rows, paired with their labels as they arrive, per
    challenger version; decides when a canary must stop."""

    def __init__(
        self,
        spec: "PipelineSpec",
        metrics: "ServingMetrics",
        stop: Callable[[str, str], dict[str, str]],
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.stop = stop
        self.on_stopped = on_stopped
        self._lock = threading.Lock()
        # (request_id, entity key) -> (challenger version, champion's (prediction, score),
        # challenger's (prediction, score))
        self._awaiting: OrderedDict[tuple[str, str], tuple[str, Any, Any]] = OrderedDict()
        self._labelled: dict[str, list[tuple[Any, Any, Any]]] = {}
        self.halted: set[str] = set()  # versions this process no longer routes to
        self.stopping: set[str] = set()  # stop job running
        self.stopped: dict[str, dict[str, Any]] = {}  # version -> the stop job's outcome
        self.last_verdict: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.spec.serving.canary_fraction > 0

    def routes_to(self, version: str) -> bool:
        """Whether canary traffic may go to this challenger version (not stopped here)."""
        return self.active and version not in self.halted

    def record(
        self,
        request_ids: list[str],
        keys: list[str],
        challenger_version: str,
        champion: "Outputs",
        challenger: "Outputs",
    ) -> None:
        with self._lock:
            for i, (request_id, key) in enumerate(zip(request_ids, keys, strict=True)):
                self._awaiting[request_id, key] = (
                    challenger_version,
                    (champion.prediction[i], champion.score[i]),
                    (challenger.prediction[i], challenger.score[i]),
                )
            while len(self._awaiting) > MAX_AWAITING_LABELS:
                self._awaiting.popitem(last=False)

    def feedback(self, labels: list[tuple[str, str, Any]]) -> dict[str, int]:
        """Pair (request_id, entity key, label) with the predictions of that row; returns how
        many matched a row scored by both versions. May start the canary's stop."""
        matched = 0
        versions = set()
        with self._lock:
            for request_id, key, label in labels:
                pair = self._awaiting.pop((request_id, key), None)
                if pair is None:
                    continue
                version, champion, challenger = pair
                self._labelled.setdefault(version, []).append((label, champion, challenger))
                versions.add(version)
                matched += 1
        self.metrics.feedback.labels(self.spec.name, "true").inc(matched)
        self.metrics.feedback.labels(self.spec.name, "false").inc(len(labels) - matched)
        for version in versions:
            self.judge(version)
        return {"matched": matched, "unmatched": len(labels) - matched}

    def live_metrics(self, version: str) -> dict[str, Any]:
        """Champion's and challenger's metrics on the labelled rows both scored."""
        import pandas as pd

        from mlops_assets.ml.evaluation import served_metrics

        with self._lock:
            rows = list(self._labelled.get(version, []))
        result: dict[str, Any] = {"challenger_version": version, "labelled_rows": len(rows)}
        if not rows:
            return result
        label = self.spec.label
        for role, at in (("champion", 1), ("challenger", 2)):
            frame = pd.DataFrame(
                {
                    label: [r[0] for r in rows],
                    "prediction": [r[at][0] for r in rows],
                    "score": [r[at][1] for r in rows],
                }
            )
            if not self.spec.is_classification or frame["score"].isna().all():
                frame = frame.drop(columns="score")
            result[role] = served_metrics(frame, self.spec)
        return result

    def judge(self, version: str) -> dict[str, Any]:
        """Compare the canary with the champion once enough rows are labelled; stop it when it
        is worse by more than the rollback margin on any of its metrics."""
        verdict = self.live_metrics(version)
        margins = self.spec.monitoring.performance.rollback_margin
        enough = verdict["labelled_rows"] >= self.spec.serving.canary_min_labelled
        worse = {}
        if enough and "champion" in verdict:
            directions = METRICS_BY_TASK[self.spec.task]
            for metric, margin in margins.items():
                champion, challenger = verdict["champion"][metric], verdict["challenger"][metric]
                delta = -metric_gain(directions[metric], challenger, champion)
                if not math.isnan(delta) and delta > margin:
                    worse[metric] = round(delta, 4)
        verdict.update(enough=enough, worse_beyond_margin=worse)
        self.last_verdict = verdict
        if worse and self.active:
            with self._lock:
                if version in self.stopping or version in self.stopped:
                    return verdict
                self.halted.add(version)  # no canary traffic to it from now on
                self.stopping.add(version)
            reason = (
                f"canary v{version} worse than the champion beyond rollback_margin {margins} on "
                f"{verdict['labelled_rows']} labelled rows: {worse} (champion "
                f"{rounded(verdict['champion'])}, canary {rounded(verdict['challenger'])})"
            )
            threading.Thread(
                target=self._stop, args=(version, reason), name="stop-canary", daemon=True
            ).start()
        return verdict

    def _stop(self, version: str, reason: str) -> None:
        log.warning(f"{self.spec.model_name}: stopping the canary: {reason}")
        try:
            outcome = self.stop(version, reason)
        except Exception:
            log.exception(
                f"{self.spec.model_name}: stopping canary v{version} failed (no canary traffic "
                "from this process; the next label retries)"
            )
            with self._lock:
                self.stopping.discard(version)
            return
        with self._lock:
            self.stopping.discard(version)
            self.stopped[version] = {"reason": reason, **outcome}
        if outcome.get("skipped") != "true":  # else another replica or a promotion came first
            self.metrics.canary_stops.labels(self.spec.name).inc()
        self.on_stopped()


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}
