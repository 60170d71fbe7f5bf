"""Operations routes: `POST /admin/reload` (loopback clients only: swap in INDEX_DIR's current index now) and
`GET /metrics` (Prometheus text format)."""
import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import Error
from .guards import is_loopback
from .service import ServiceError


def admin_router(service, metrics):
    router = APIRouter()

    @router.post("/admin/reload")
    async def reload(request: Request):
        if not is_loopback(request.client.host if request.client else None):
            raise ServiceError(403, "reloading is allowed from this machine only (a loopback address)")
        try:
            swapped = await asyncio.to_thread(service.live.reload)
        except (Error, OSError) as e:
            raise ServiceError(409, f"the index was not reloaded, the loaded one keeps serving: "
                                    f"{getattr(e, 'strerror', None) or e}") from None
        snapshot = service.live.current
        return {"reloaded": swapped, "count": snapshot.index.count, "version": snapshot.version}

    @router.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
