"""The predict routes without FastAPI's per-request machinery.

FastAPI's stack (its middlewares, routing, dependency solving, body parsing) cost ~270 us of CPU
per request here, more than the scoring of a single-entity request in a batch. The predict
routes are registered with FastAPI as usual (OpenAPI, /docs, the same request model), and
`ServingApp` answers `POST` to their paths directly: the body read with the same size limit
as the Guard middleware, validated in one call by pydantic's JSON parser against the route's
own request model (strict, as FastAPI validates it), errors in FastAPI's format (422, `loc`
starting with "body"), and the route's own handler. Every other request goes through FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

log = logging.getLogger("mlops_assets.serving")

Handler = Callable[[Any, Any, Any], Awaitable[None]]


class ServingApp(FastAPI):
    """FastAPI, plus routes answered before its stack: `fast_routes` maps a path to the ASGI
    handler of its POST requests."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[str, Handler] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                return await handler(scope, receive, send)
        await super().__call__(scope, receive, send)


def too_large(max_body: int) -> JSONResponse:
    detail = {"loc": ["body"], "msg": f"request body over {max_body} bytes", "type": "too_large"}
    return JSONResponse({"detail": [detail]}, status_code=413)


async def read_body(scope: Any, receive: Any, max_body: int) -> bytes | None:
    """The request body, or None when it is (or announces to be) over `max_body` bytes."""
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if length is not None and (not length.isdigit() or int(length) > max_body):
        return None
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as FastAPI reports a body's: `loc` starts with "body"; a body that is
    not JSON is not echoed back (it may be megabytes)."""
    errors = []
    for error in exc.errors(include_url=False):
        error = {**error, "loc": ["body", *error["loc"]]}
        if error["type"] == "json_invalid":
            error.pop("input", None)
        errors.append(error)
    return errors


def fast_route(
    request_model: type[BaseModel],
    respond: Callable[[Any], Awaitable[Response]],
    max_body: int,
    refused: Callable[[list[dict[str, Any]]], Response],
    failed: Callable[[str], None],
) -> Handler:
    """The ASGI handler of one predict route: body -> `request_model` -> `respond(request)`;
    a body that does not validate is answered by `refused(errors)` (FastAPI's 422), an
    exception is a 500 reported to `failed(path)`."""

    async def handle(scope: Any, receive: Any, send: Any) -> None:
        try:
            body = await read_body(scope, receive, max_body)
            if body is None:
                response: Response = too_large(max_body)
            else:
                try:
                    request = request_model.model_validate_json(body)
                except ValidationError as exc:
                    response = refused(jsonable_encoder(body_errors(exc)))
                else:
                    response = await respond(request)
        except Exception:
            failed(scope["path"])
            response = JSONResponse({"detail": "internal error (see the server log)"}, 500)
        await response(scope, receive, send)

    return handle
