"""The search routes: `GET /search?text=&k=`, `POST /search` (an uploaded image), `GET /image?id=&size=` (a
thumbnail), `GET /healthz` and the web page at `/`.  Decoding and the model run on the worker pool; a request
uses one snapshot of the live index from start to end."""
import os
import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import HTMLResponse, Response

from ..data.images import decode_image
from ..errors import BadImageError, InputError
from ..search.query import search
from .service import ServiceError
from .thumbnails import DEFAULT_SIDE, MAX_SIDE

MAX_K = 100
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


def search_router(service):
    router = APIRouter()

    def check_k(k, snapshot):
        limit = min(MAX_K, snapshot.index.count)
        if not 1 <= k <= limit:
            raise ServiceError(400, f"k must be between 1 and {limit}, got {k}")

    def timed_search(snapshot, k, text=None, image=None):
        start = time.perf_counter()
        results = service.encode(search, service.model, snapshot.index, text, image, k)
        return {"results": results, "seconds": round(time.perf_counter() - start, 4)}

    @router.get("/healthz")
    async def healthz():
        snapshot = service.live.current
        index = snapshot.index
        return {"status": "ok", "count": index.count, "dim": index.dim, "kind": index.manifest["kind"],
                "backend": index.manifest["backend"], "version": snapshot.version,
                "thumbnails": snapshot.gallery is not None, "queue": service.pool.depth}

    @router.get("/search")
    async def search_text(text: str = Query(..., max_length=2000), k: int = 10):
        if not text.strip():
            raise ServiceError(400, "the text query is empty")
        snapshot = service.live.current
        check_k(k, snapshot)
        return await service.run(timed_search, snapshot, k, text)

    @router.post("/search")
    async def search_image(image: Annotated[UploadFile, File()], k: int = 10):
        limit = service.settings.max_upload_bytes
        data = await image.read(limit + 1)
        if len(data) > limit:
            raise ServiceError(413, f"the upload is over the limit of {limit} bytes")
        if not data:
            raise ServiceError(400, "the upload is empty")
        snapshot = service.live.current

        def decode_and_search():
            try:
                rgb = decode_image(data, max_pixels=service.model.max_image_pixels)
            except ValueError as e:
                raise InputError(f"not a usable image: {e}") from None
            check_k(k, snapshot)
            return timed_search(snapshot, k, image=rgb)
        return await service.run(decode_and_search)

    @router.get("/image")
    async def thumbnail(id: str, size: int = Query(DEFAULT_SIDE, ge=1, le=MAX_SIDE)):
        gallery = service.live.current.gallery
        if gallery is None:
            raise ServiceError(404, "this index has no gallery to show images from (build it with --gallery)")

        def draw():
            try:
                return service.thumbnails.get(gallery, id, size)
            except BadImageError as e:  # the gallery's file, not the request, is bad
                raise ServiceError(404, f"image {id!r} cannot be shown: {e}") from None
            except InputError:  # e.g. the gallery changed since the build: the service's 409
                raise
            except (ValueError, OSError) as e:
                reason = getattr(e, "strerror", None) or e
                raise ServiceError(404, f"image {id!r} cannot be shown: {reason}") from None
        jpeg = await service.run(draw, pool=service.thumbnail_pool)
        if jpeg is None:
            raise ServiceError(404, f"no image {id!r} in this gallery")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    with open(PAGE, encoding="utf-8") as f:
        page_html = f.read()

    @router.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    return router
