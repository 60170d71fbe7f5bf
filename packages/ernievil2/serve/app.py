"""The search service (FastAPI).  Routes live in routes_*.py, one module per concern; this module assembles
them with the shared Service, the guards (Host check, body limit), metrics and the error shapes.

    GET  /search?text=...&k=10      POST /search (an image upload)     GET /image?id=...&size=256
    GET  /healthz   GET /metrics    POST /admin/reload (loopback)       POST /v1/embeddings (OpenAI shape)
    GET  /search/fields   POST /search/query   POST /search/batch   GET /duplicates   (index_routes.py)
    GET  /          (the web page)

Every error is JSON `{"error": message}` (under /v1/: OpenAI's `{"error": {"message", "type", ...}}`) with no
absolute path or file bytes in it; the service keeps running."""
import contextlib
import logging

from .guards import GuardMiddleware
from .live_index import LiveIndex
from .metrics import MetricsMiddleware, ServiceMetrics
from .service import ServeSettings, Service, ServiceError, public_message

logger = logging.getLogger(__name__)

_OPENAI_TYPES = {503: "server_overloaded", 504: "timeout", 500: "server_error"}


def create_app(model, index_dir, settings=None):
    """A FastAPI app searching INDEX_DIR (followed as it is rebuilt or synced) with a loaded api.Model."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from .index_routes import index_router
    from .routes_admin import admin_router
    from .routes_openai import embeddings_router
    from .routes_search import search_router

    settings = settings or ServeSettings()
    service = Service(model, LiveIndex(index_dir), settings)
    metrics = ServiceMetrics(service.live, service.pools)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if settings.reload_seconds > 0:
            service.live.poll(settings.reload_seconds)
        try:
            yield
        finally:
            service.shutdown()

    app = FastAPI(title="ERNIE-ViL 2.0 search", docs_url="/docs", lifespan=lifespan)
    app.state.service = service
    routers = [search_router(service), admin_router(service, metrics), embeddings_router(service),
               index_router(ServiceHost(service), max_batch=settings.max_batch,
                            max_upload_bytes=settings.max_upload_bytes)]
    for router in routers:
        app.include_router(router)
    paths = frozenset(route.path for router in routers for route in router.routes)

    @app.exception_handler(ServiceError)
    async def service_error(request, exc):
        return error_response(request.url.path, exc.status, exc.message, exc.headers, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = "; ".join(f"{'.'.join(map(str, p['loc'][1:])) or p['loc'][0]}: {p['msg']}" for p in exc.errors())
        return error_response(request.url.path, 422, problems)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        logger.exception("unexpected error answering %s", request.url.path)
        return error_response(request.url.path, 500, "internal error; the server's log has the details")

    app.add_middleware(GuardMiddleware, bound_host=settings.host, allow_hosts=settings.allow_hosts,
                       max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    return app


class ServiceHost:
    """The living-index routes' host (index_routes.py) on the Service: its model, the index snapshot current
    when asked, its worker pool with the model lock, and its error type."""

    def __init__(self, service):
        self.service = service
        self.model = service.model

    def current_index(self):
        return self.service.live.current.index

    async def run(self, fn, *args):
        return await self.service.run(self.service.encode, fn, *args)

    def error(self, status, message):
        return ServiceError(status, message)


def error_response(path, status, message, headers=None, param=None):
    from fastapi.responses import JSONResponse
    message = public_message(message)
    if path.startswith("/v1/"):
        kind = _OPENAI_TYPES.get(status, "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def load_app(config, overrides, index_dir, settings=None):
    """The app for `python -m ernievil2 serve`: the index is checked first (a missing one fails fast), then the
    model is loaded."""
    from ..api.model import model_from_config
    from ..infer.options import load_query_config
    from ..search.index import read_manifest
    read_manifest(index_dir)
    model = model_from_config(load_query_config(config, overrides))
    return create_app(model, index_dir, settings)
