"""Prometheus metrics of the server, in their own registry (GET /metrics)."""

from __future__ import annotations

# Request latency buckets, seconds: sub-millisecond to a few seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Rows per scored batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """Counters and histograms labelled by pipeline; `exposition()` is the /metrics body."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.metrics import disable_created_metrics

        disable_created_metrics()  # no `*_created` series: they double the exposition

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlops_serving_requests",
            "Prediction requests answered, by pipeline and HTTP status code.",
            ["pipeline", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mlops_serving_request_seconds",
            "Time to answer a prediction request (features, model, response).",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "mlops_serving_batch_rows",
            "Entity rows scored together in one batch (the requests that arrived together).",
            ["pipeline"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "mlops_serving_errors",
            "Requests answered with an error, by kind (bad_request, unknown_entity, "
            "no_champion, internal).",
            ["pipeline", "kind"],
            registry=r,
        )
        self.rows = Counter(
            "mlops_serving_rows",
            "Entity rows answered, by the role of the version that answered them.",
            ["pipeline", "role", "version"],
            registry=r,
        )
        self.missing = Counter(
            "mlops_serving_rows_missing_features",
            "Rows answered with at least one feature missing (imputed by the model).",
            ["pipeline"],
            registry=r,
        )
        self.served = Gauge(
            "mlops_serving_model_version",
            "The registered version served for each alias (champion, challenger); 0: none.",
            ["pipeline", "model", "alias"],
            registry=r,
        )
        self.swaps = Counter(
            "mlops_serving_model_swaps",
            "Times a newly loaded version was swapped in for an alias.",
            ["pipeline", "alias"],
            registry=r,
        )
        self.load_failures = Counter(
            "mlops_serving_model_load_failures",
            "Registry reads or model loads that failed (the previous version kept serving).",
            ["pipeline"],
            registry=r,
        )
        self.log_dropped = Counter(
            "mlops_serving_request_log_dropped",
            "Rows left out of the shadow scoring and request log (queue full, or a failed "
            "write); their requests were answered, never delayed or failed.",
            ["pipeline"],
            registry=r,
        )
        self.log_rows = Counter(
            "mlops_serving_request_log_rows",
            "Rows written to the Parquet request log.",
            ["pipeline"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "mlops_serving_shadow_rows",
            "Rows scored off the response path by the version that did not answer them.",
            ["pipeline", "version"],
            registry=r,
        )
        self.feedback = Counter(
            "mlops_serving_feedback_rows",
            "Labels received (POST /feedback), by whether they matched a served row.",
            ["pipeline", "matched"],
            registry=r,
        )
        self.canary_stops = Counter(
            "mlops_serving_canary_stops",
            "Canaries stopped automatically (challenger worse than the champion beyond the "
            "rollback margin on labelled traffic).",
            ["pipeline"],
            registry=r,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def set_served(self, pipeline: str, model: str, alias: str, version: str | None) -> None:
        self.served.labels(pipeline, model, alias).set(float(version) if version else 0.0)
