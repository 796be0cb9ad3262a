"""The HTTP application: FastAPI routes over one PipelineService per pipeline.

    POST /{pipeline}/predict    entity keys (+ request-time features) -> answers
    POST /{pipeline}/feedback   labels of answered rows (the canary's live metric)
    POST /predict, /feedback    the same, when one pipeline is served
    GET  /pipelines             what each pipeline serves now
    GET  /health  /ready  /metrics  /docs (OpenAPI)

No `from __future__ import annotations` here: FastAPI reads the request models of the routes
built below from their annotations at run time.
"""

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from mlops_assets.serving.fast_path import ServingApp, fast_route
from mlops_assets.serving.metrics import ServingMetrics
from mlops_assets.serving.scoring import UnknownEntities
from mlops_assets.serving.service import NoChampion, PipelineService
from mlops_assets.spec import PipelineSpec

log = logging.getLogger("mlops_assets.serving")

# Bytes a request body may hold per entity of serving.max_batch (a row of keys and features
# is well below it); a larger body is refused before it is read.
BODY_BYTES_PER_ENTITY = 4096
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def entity_model(spec: PipelineSpec) -> type[BaseModel]:
    """One entity row: its key, and optionally request-time values of the spec's features
    (used instead of the online store's)."""
    fields: dict[str, Any] = {
        spec.entity_key: (
            str,
            Field(min_length=1, max_length=256, description="Entity key (the Feast entity)."),
        )
    }
    for feature in spec.features:
        if feature.type == "numeric":
            kind: Any = float
            bounds = {"ge": feature.min, "le": feature.max}
        else:
            allowed = feature.allowed_values
            kind = Literal[tuple(allowed)] if allowed else str
            bounds = {}
        fields[feature.name] = (
            kind | None,
            Field(
                default=None,
                description=f"{feature.type} feature; omitted: the online store's latest value.",
                **{k: v for k, v in bounds.items() if v is not None},
            ),
        )
    return create_model(f"{pascal(spec.name)}Entity", __config__=STRICT, **fields)


def predict_request_model(spec: PipelineSpec) -> type[BaseModel]:
    return create_model(
        f"{pascal(spec.name)}PredictRequest",
        __config__=STRICT,
        entities=(
            list[entity_model(spec)],
            Field(
                min_length=1,
                max_length=spec.serving.max_batch,
                description="The entities to score (one or a batch).",
            ),
        ),
        allow_missing=(
            bool,
            Field(
                default=False,
                description="Answer entities the online store does not know (all their "
                "features imputed) instead of refusing the request with 404.",
            ),
        ),
    )


def feedback_request_model(spec: PipelineSpec) -> type[BaseModel]:
    if spec.is_classification:
        label: Any = Literal[tuple(spec.classes)] if spec.classes else str | int
    else:
        label = float
    row = create_model(
        f"{pascal(spec.name)}Label",
        __config__=STRICT,
        request_id=(str, Field(description="request_id of the answer.")),
        **{spec.entity_key: (str, Field(description="The entity of the answered row."))},
        label=(label, Field(description=f"The true {spec.label}.")),
    )
    return create_model(
        f"{pascal(spec.name)}FeedbackRequest",
        __config__=STRICT,
        labels=(list[row], Field(min_length=1, max_length=100_000)),
    )


class Answer(BaseModel):
    """One entity's answer (the entity key field is named as in the spec)."""

    label: str | int | None = Field(default=None, description="Classification: the label.")
    score: float | None = Field(
        default=None,
        description="Binary: the positive class's probability; multiclass: the label's.",
    )
    value: float | None = Field(default=None, description="Regression: the prediction.")
    version: str = Field(description="The registered model version that answered this row.")
    served_by: Literal["champion", "challenger"]
    features_missing: bool = Field(description="Some feature had no value (imputed).")
    missing_features: list[str]


class PredictResponse(BaseModel):
    pipeline: str
    model: str = Field(description="Registered model name.")
    version: str = Field(description="The champion version this request was served with.")
    request_id: str = Field(description="Send it back with the labels (POST .../feedback).")
    predictions: list[Answer]


def error(status: int, loc: list[Any], message: str, kind: str, value: Any = None) -> JSONResponse:
    """An error in FastAPI's validation format: the field, the message, the kind."""
    detail = {"loc": loc, "msg": message, "type": kind}
    if value is not None:
        detail["input"] = value
    return JSONResponse({"detail": [detail]}, status_code=status)


def add_pipeline_routes(
    app: ServingApp,
    service: PipelineService,
    prefixes: list[str],
    max_body: int,
    refused: Callable[[str, list[dict[str, Any]]], Response],
    failed: Callable[[str], None],
) -> None:
    """The pipeline's predict and feedback routes under each prefix; predict is also answered
    before FastAPI's stack (fast_path), with the same request model and handler."""
    spec, metrics = service.spec, service.metrics
    PredictRequest = predict_request_model(spec)  # noqa: N806 (a class)
    FeedbackRequest = feedback_request_model(spec)  # noqa: N806
    requests = {code: metrics.requests.labels(spec.name, str(code)) for code in (200, 404, 503)}
    latency = metrics.latency.labels(spec.name)

    async def predict(body: PredictRequest) -> Response:  # type: ignore[valid-type]
        return await respond(body)

    async def respond(body: Any) -> Response:
        started = time.perf_counter()
        rows = [entity.model_dump() for entity in body.entities]
        try:
            answer = await service.batcher.submit(rows, body.allow_missing)
            response: Response = JSONResponse(answer)
        except UnknownEntities as exc:
            metrics.errors.labels(spec.name, "unknown_entity").inc()
            response = error(
                404,
                ["body", "entities", exc.positions[0], spec.entity_key],
                f"unknown entit{'y' if len(exc.keys) == 1 else 'ies'} {exc.keys[:10]}: the "
                "online store has no features for them and the request does not give them all "
                "(send them, or allow_missing: true)",
                "unknown_entity",
                exc.keys[0],
            )
        except NoChampion as exc:
            metrics.errors.labels(spec.name, "no_champion").inc()
            response = error(503, [], str(exc), "no_champion")
        requests[response.status_code].inc()
        latency.observe(time.perf_counter() - started)
        return response

    def feedback(body: FeedbackRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        labels = [
            (row.request_id, getattr(row, spec.entity_key), label_value(spec, row.label))
            for row in body.labels
        ]
        return service.feedback(labels)

    for prefix in prefixes:
        app.post(
            f"{prefix}/predict",
            response_model=PredictResponse,
            responses={404: {"description": "Unknown entity"}, 503: {"description": "No champion"}},
            summary=f"Score entities with {spec.model_name}'s champion",
            tags=[spec.name],
            name=f"{spec.name}_predict{'_default' if not prefix else ''}",
        )(predict)
        app.fast_routes[f"{prefix}/predict"] = fast_route(
            PredictRequest,
            respond,
            max_body,
            lambda errors, path=f"{prefix}/predict": refused(path, errors),
            failed,
        )
        app.post(
            f"{prefix}/feedback",
            summary="Labels of answered rows (pairs the champion and the challenger)",
            tags=[spec.name],
            name=f"{spec.name}_feedback{'_default' if not prefix else ''}",
        )(feedback)


def label_value(spec: PipelineSpec, label: Any) -> Any:
    return str(label) if spec.is_classification else float(label)


class Guard:
    """ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on every request): refuses a
    body whose Content-Length is over `max_body` with 413 before it is read, and turns any
    exception of a request into a 500 (counted by `on_error`), so no input crashes the server."""

    def __init__(self, app: Any, max_body: int, on_error: Callable[[str], None]) -> None:
        self.app = app
        self.max_body = max_body
        self.on_error = on_error

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            too_large = error(
                413, ["body"], f"request body over {self.max_body} bytes", "too_large"
            )
            return await too_large(scope, receive, send)
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            self.on_error(scope["path"])
            if not started:
                failed = JSONResponse({"detail": "internal error (see the server log)"}, 500)
                await failed(scope, receive, send)


def create_app(services: dict[str, PipelineService], metrics: ServingMetrics) -> ServingApp:
    """The application; starting it (its lifespan) starts every service's batcher, registry
    follower and request worker, stopping it scores what is waiting and flushes the request
    logs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for service in services.values():
            service.start()
        yield
        for service in services.values():
            await service.batcher.stop()
            service.stop()

    app = ServingApp(
        title="mlops-suite online inference",
        description="The champion of each pipeline (MLflow alias), features from the Feast "
        "online store; shadow and canary with the challenger. See docs/serving.md.",
        lifespan=lifespan,
    )
    max_batch = max((s.spec.serving.max_batch for s in services.values()), default=1)
    max_body = max_batch * BODY_BYTES_PER_ENTITY

    def internal_error(path: str) -> None:
        log.exception(f"{path} failed")
        pipeline = pipeline_of(path, services)
        metrics.errors.labels(pipeline, "internal").inc()
        metrics.requests.labels(pipeline, "500").inc()

    app.add_middleware(Guard, max_body=max_body, on_error=internal_error)

    def refused(path: str, errors: list[dict[str, Any]]) -> Response:
        pipeline = pipeline_of(path, services)
        metrics.errors.labels(pipeline, "bad_request").inc()
        metrics.requests.labels(pipeline, "422").inc()
        return JSONResponse({"detail": finite(errors)}, 422)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return refused(request.url.path, jsonable_encoder(exc.errors()))

    for name, service in services.items():
        prefixes = [f"/{name}", *([""] if len(services) == 1 else [])]
        add_pipeline_routes(app, service, prefixes, max_body, refused, internal_error)

    @app.get("/pipelines", summary="What each pipeline serves now")
    def pipelines() -> dict[str, Any]:
        return {name: service.status() for name, service in services.items()}

    @app.get("/health", summary="Liveness: the process answers and follows the registry")
    def health() -> Response:
        stuck = [
            name
            for name, s in services.items()
            if not (s.holder.following and s.worker.alive and s.batcher.running)
        ]
        if stuck:
            return JSONResponse({"status": "unhealthy", "stuck": stuck}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="Readiness: every pipeline's champion loaded, its features readable")
    def ready() -> Response:
        status = {name: service.status() for name, service in services.items()}
        waiting = [
            name
            for name, s in status.items()
            if s["champion"] is None or not s["feature_store_ready"]
        ]
        degraded = [name for name, s in status.items() if s["last_error"]]
        state = "not_ready" if waiting else "degraded" if degraded else "ready"
        return JSONResponse({"status": state, "pipelines": status}, 503 if waiting else 200)

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app


def finite(value: Any) -> Any:
    """`value` with NaN and infinity (echoed from a refused input) as text: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def pipeline_of(path: str, services: dict[str, PipelineService]) -> str:
    """The pipeline a request path is for (the only one for /predict)."""
    first = path.strip("/").split("/")[0]
    if first in services:
        return first
    return next(iter(services)) if len(services) == 1 else "none"
