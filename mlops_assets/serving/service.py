"""One pipeline behind the endpoint: its served versions, its answers and its feedback."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from mlops_assets.serving.batching import (
    DEFAULT_MAX_ROWS,
    DEFAULT_WAIT_SECONDS,
    MicroBatcher,
    Pending,
)
from mlops_assets.serving.canary import CanaryMonitor, run_stop_canary
from mlops_assets.serving.models import LoadedVersion, ModelHolder, Served
from mlops_assets.serving.request_log import CHALLENGER, CHAMPION, AnsweredBatch, RequestWorker
from mlops_assets.serving.scoring import Outputs, canary_rows, predict, read_batch, read_features

if TYPE_CHECKING:
    from mlops_assets.serving.metrics import ServingMetrics
    from mlops_assets.spec import PipelineSpec
    from mlops_resources.feast_store import FeastResource
    from mlops_resources.mlflow_tracking import MLflowResource


log = logging.getLogger("mlops_assets.serving")

WARM_UP_KEY = "__mlops_warm_up__"
WARM_UP_RETRY_SECONDS = 5.0


class NoChampion(RuntimeError):
    """No champion is loaded: the registry has none yet, or it has not loaded."""


class PipelineService:
    """The served versions of one pipeline (ModelHolder), the off-path worker (shadow scoring,
    canary pairs, request log) and the canary monitor, behind `predict` and `feedback`."""

    def __init__(
        self,
        spec: PipelineSpec,
        mlflow: MLflowResource,
        feast: FeastResource,
        metrics: ServingMetrics,
        batch_max_rows: int = DEFAULT_MAX_ROWS,
        batch_wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        self.spec = spec
        self.feast = feast
        self.metrics = metrics
        self.holder = ModelHolder(
            spec,
            mlflow,
            on_swap=self.swapped,
            on_error=lambda message: metrics.load_failures.labels(spec.name).inc(),
        )
        self.monitor = CanaryMonitor(
            spec,
            metrics,
            stop=partial(run_stop_canary, spec, mlflow),
            on_stopped=self.holder.refresh,
        )
        self.worker = RequestWorker(spec, metrics, self.monitor)
        self.batcher = MicroBatcher(spec.name, self.score, batch_max_rows, batch_wait_seconds)
        self.feast_ready = False
        self.feast_error: str | None = None
        self._missing = metrics.missing.labels(spec.name)
        for alias in (CHAMPION, CHALLENGER):
            metrics.set_served(spec.name, spec.model_name, alias, None)

    def swapped(self, alias: str, loaded: LoadedVersion | None) -> None:
        spec = self.spec
        self.metrics.set_served(spec.name, spec.model_name, alias, loaded and loaded.version)
        self.metrics.swaps.labels(spec.name, alias).inc()

    def start(self) -> None:
        """Start the threads and, on the running event loop, the batcher."""
        self.batcher.start()
        self.worker.start()
        self.holder.start()
        threading.Thread(target=self.warm_up, name=f"warm-up-{self.spec.name}", daemon=True).start()

    def warm_up(self) -> None:
        """Open the feature store (its registry and online store take seconds the first time)
        with a read of a key that does not exist, so the first request does not pay for it;
        retried every WARM_UP_RETRY_SECONDS until it works (not ready until then)."""
        while not self.holder.stopping:
            try:
                read_features(self.spec, self.feast, [{self.spec.entity_key: WARM_UP_KEY}], True)
                self.feast_ready, self.feast_error = True, None
                return
            except Exception as exc:
                self.feast_error = repr(exc)
                log.exception(f"{self.spec.name}: the Feast online store could not be read")
            time.sleep(WARM_UP_RETRY_SECONDS)

    def stop(self) -> None:
        self.holder.stop()
        self.worker.stop()

    def score(self, batch: list[Pending]) -> list[dict[str, Any] | Exception]:
        """Answer the requests of a batch (batching.MicroBatcher) with one snapshot of the
        served versions (never two champions in one answer, nor in one batch), one online
        store read and one model call per answering version; per request its answer, or the
        NoChampion / scoring.UnknownEntities that refuses it."""
        served = self.holder.current
        champion, challenger = served.champion, served.challenger
        if champion is None:
            refused = NoChampion(self.no_champion_reason())
            return [refused] * len(batch)
        spec = self.spec
        features = read_batch(spec, self.feast, [(p.rows, p.allow_missing) for p in batch])
        keys = features.keys
        routed = (
            canary_rows(spec.name, keys, spec.serving.canary_fraction)
            if challenger is not None and self.monitor.routes_to(challenger.version)
            else [False] * len(keys)
        )
        answers = self.answer(served, features.frame, routed) if keys else Outputs([], [])
        versions = {CHAMPION: champion.version, CHALLENGER: challenger and challenger.version}
        roles = [CHALLENGER if r else CHAMPION for r in routed]
        key_name, classify = spec.entity_key, spec.is_classification
        results: list[dict[str, Any] | Exception] = []
        request_ids, received_at, latency_ms = [], [], []
        done = time.perf_counter()
        for pending, span in zip(batch, features.spans, strict=True):
            if isinstance(span, Exception):
                results.append(span)
                continue
            request_id = uuid.uuid4().hex
            predictions = []
            for i in range(span.start, span.stop):
                row: dict[str, Any] = {key_name: keys[i]}
                if classify:
                    row["label"], row["score"] = answers.prediction[i], answers.score[i]
                else:
                    row["value"] = answers.prediction[i]
                missing = features.missing[i]
                row.update(
                    version=versions[roles[i]],
                    served_by=roles[i],
                    features_missing=bool(missing),
                    missing_features=missing,
                )
                predictions.append(row)
            results.append(
                {
                    "pipeline": spec.name,
                    "model": spec.model_name,
                    "version": champion.version,
                    "request_id": request_id,
                    "predictions": predictions,
                }
            )
            count = span.stop - span.start
            request_ids += [request_id] * count
            received_at += [pending.received_at] * count
            latency_ms += [(done - pending.started) * 1000] * count
        if keys:
            self.account(keys, roles, versions, features.missing)
            self.worker.submit(
                AnsweredBatch(
                    request_ids=request_ids,
                    received_at=received_at,
                    latency_ms=latency_ms,
                    keys=keys,
                    frame=features.frame,
                    missing=features.missing,
                    served=served,
                    canary=routed,
                    answers=answers,
                )
            )
        return results

    def account(
        self,
        keys: list[str],
        roles: list[str],
        versions: dict[str, str | None],
        missing: list[list[str]],
    ) -> None:
        """Count a batch's answered rows in /metrics."""
        self.metrics.batch_rows.labels(self.spec.name).observe(len(keys))
        canary = roles.count(CHALLENGER)
        for role, count in ((CHAMPION, len(keys) - canary), (CHALLENGER, canary)):
            if count:
                self.metrics.rows.labels(self.spec.name, role, versions[role]).inc(count)
        incomplete = sum(bool(m) for m in missing)
        if incomplete:
            self._missing.inc(incomplete)

    def answer(self, served: Served, frame: Any, routed: list[bool]) -> Outputs:
        """The answering version's output per row: the champion's, the challenger's for the
        canary's rows."""
        if not any(routed):
            return predict(served.champion.model, frame, self.spec)
        if all(routed):
            return predict(served.challenger.model, frame, self.spec)
        out = Outputs([None] * len(routed), [None] * len(routed))
        for model, canary in ((served.champion.model, False), (served.challenger.model, True)):
            rows = [i for i, r in enumerate(routed) if r == canary]
            part = predict(model, frame.iloc[rows], self.spec)
            for at, i in enumerate(rows):
                out.prediction[i], out.score[i] = part.prediction[at], part.score[at]
        return out

    def feedback(self, labels: list[tuple[str, str, Any]]) -> dict[str, Any]:
        """Labels of answered rows, (request_id, entity key, label): paired with both versions'
        predictions while a challenger exists (the canary's live metric)."""
        counts = self.monitor.feedback(labels)
        return {**counts, "canary": self.monitor.last_verdict or None}

    def no_champion_reason(self) -> str:
        error = self.holder.last_error
        if error is not None:
            return f"no champion of {self.spec.model_name} loaded: {error.message}"
        if self.holder.last_refresh is None:
            return f"{self.spec.model_name}: the champion is still loading"
        return f"{self.spec.model_name} has no champion in the registry yet"

    def status(self) -> dict[str, Any]:
        """What /ready and /pipelines report for this pipeline."""
        served = self.holder.current
        error = self.holder.last_error
        return {
            "model": self.spec.model_name,
            "champion": served.champion.version if served.champion else None,
            "challenger": served.challenger.version if served.challenger else None,
            "canary_fraction": self.spec.serving.canary_fraction,
            "canary_routing": bool(
                served.challenger and self.monitor.routes_to(served.challenger.version)
            ),
            "canary_stopped": self.monitor.stopped,
            "refresh_seconds": self.spec.serving.refresh_seconds,
            "last_refresh": iso(self.holder.last_refresh),
            "last_error": {"message": error.message, "at": iso(error.at)} if error else None,
            "following_registry": self.holder.following,
            "feature_store_ready": self.feast_ready,
            "feature_store_error": self.feast_error,
            "request_log": self.spec.serving.request_log,
            "request_log_pending": self.worker.pending(),
        }


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
