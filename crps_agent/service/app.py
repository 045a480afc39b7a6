"""The HTTP memory service (FastAPI): one process owns the store, any number of agents share
it over HTTP (`crps-agent serve`, `crps_agent.client.MemoryClient`).

Routes (OpenAPI at /openapi.json, docs at /docs):

    GET  /healthz                       liveness (never needs the API key)
    GET  /v1/insights                   ?namespace&status&domain&limit&offset
    POST /v1/insights                   {text, kind, domain, namespace, tags}
    GET|PATCH|DELETE /v1/insights/{id}
    POST /v1/recall                     {query, k, namespace, domain}
    POST /v1/outcomes                   {insight_ids, success, event_id?}
    GET  /v1/stats                      ?namespace

With an API key every route but /healthz needs `Authorization: Bearer KEY` (401
otherwise). Invalid bodies answer 422 naming the field, unknown ids 404, bodies over
`max_body` bytes 413. The service is the single writer of its store: writes are serialised
in this process, so concurrent agents never lose an update.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run
# time, and some name values local to create_app (the auth dependency).
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crps_agent.errors import ConfigError, CrpsError, NotFoundError
from crps_agent.integrations import ops

if TYPE_CHECKING:
    from crps_agent.memory.facade import Memory

__all__ = ["create_app"]

MAX_BODY = 256 * 1024
_TEXT = Field(min_length=1, max_length=ops.MAX_TEXT_CHARS)
NamespaceStr = Annotated[str, Field(min_length=1, max_length=256)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewInsight(_Body):
    text: str = _TEXT
    kind: str = Field("strategy", max_length=32)
    domain: str = Field("", max_length=64)
    namespace: NamespaceStr | None = None
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list,
                                                             max_length=32)


class InsightPatch(_Body):
    text: str | None = Field(None, min_length=1, max_length=ops.MAX_TEXT_CHARS)
    kind: str | None = Field(None, max_length=32)
    status: str | None = Field(None, max_length=16)
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=32)


class RecallRequest(_Body):
    query: str = Field(min_length=1, max_length=ops.MAX_QUERY_CHARS)
    k: int = Field(5, ge=1, le=ops.MAX_K)
    namespace: NamespaceStr | None = None
    domain: str | None = Field(None, max_length=64)


class OutcomeRequest(_Body):
    insight_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=ops.MAX_IDS)
    success: bool
    event_id: str | None = Field(None, min_length=1, max_length=128)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, counting what actually arrives
    (a chunked upload has no Content-Length to trust)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)


def create_app(memory: "Memory", *, api_key: str | None = None, namespace: str = "default",
               max_body: int = MAX_BODY) -> FastAPI:
    """The service for `memory`. `namespace` is the default of requests without one."""
    app = FastAPI(title="crps-agent memory", version="1",
                  description="Insights learned by agents, shared over HTTP.")
    write_lock = threading.Lock()  # the single writer: one write at a time
    bearer = HTTPBearer(auto_error=False)

    def authorize(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                  ) -> None:
        if api_key is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(),
                                                       api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send "
                                "'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    def ns(value: str | None) -> str:
        return value or namespace

    def write(fn: Callable[[], Any]) -> Any:
        with write_lock:
            return fn()

    @app.exception_handler(CrpsError)
    async def crps_error(request: Request, exc: CrpsError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return JSONResponse({"detail": str(exc)}, status_code=404)
        if isinstance(exc, ops.InvalidRequestError | ConfigError):
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse({"detail": f"the store failed: {exc}"}, status_code=503)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    v1 = [Depends(authorize)]

    @app.get("/v1/insights", dependencies=v1, tags=["insights"])
    def list_insights(namespace: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
                      status: Annotated[str | None, Query(max_length=16)] = None,
                      domain: Annotated[str | None, Query(max_length=64)] = None,
                      limit: Annotated[int, Query(ge=1, le=ops.MAX_LIST)] = 50,
                      offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        return ops.list_(memory, namespace=ns(namespace), status=status, domain=domain,
                         limit=limit, offset=offset)

    @app.post("/v1/insights", dependencies=v1, tags=["insights"], status_code=201)
    def add_insight(body: NewInsight) -> dict[str, Any]:
        return write(lambda: ops.add(memory, body.text, kind=body.kind,
                                     domain=body.domain or None,
                                     namespace=ns(body.namespace), tags=body.tags))

    @app.get("/v1/insights/{insight_id}", dependencies=v1, tags=["insights"])
    def get_insight(insight_id: str) -> dict[str, Any]:
        return ops.get(memory, insight_id)

    @app.patch("/v1/insights/{insight_id}", dependencies=v1, tags=["insights"])
    def patch_insight(insight_id: str, body: InsightPatch) -> dict[str, Any]:
        return write(lambda: ops.update(memory, insight_id, text=body.text, kind=body.kind,
                                        status=body.status, tags=body.tags))

    @app.delete("/v1/insights/{insight_id}", dependencies=v1, tags=["insights"])
    def delete_insight(insight_id: str) -> dict[str, Any]:
        return write(lambda: ops.delete(memory, insight_id))

    @app.post("/v1/recall", dependencies=v1, tags=["recall"])
    def recall(body: RecallRequest) -> dict[str, Any]:
        return {"insights": ops.recall(memory, body.query, k=body.k,
                                       namespace=ns(body.namespace), domain=body.domain,
                                       full=True)}

    @app.post("/v1/outcomes", dependencies=v1, tags=["recall"])
    def outcomes(body: OutcomeRequest) -> dict[str, Any]:
        return write(lambda: ops.record(memory, body.insight_ids, body.success,
                                        event_id=body.event_id))

    @app.get("/v1/stats", dependencies=v1, tags=["insights"])
    def stats(namespace: Annotated[str | None, Query(min_length=1, max_length=256)] = None
              ) -> dict[str, Any]:
        return ops.stats(memory, ns(namespace))

    app.add_middleware(BodyLimit, limit=max_body)
    return app
