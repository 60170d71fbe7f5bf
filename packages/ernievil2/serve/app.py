"""The search service (FastAPI): `GET /search?text=...&k=10`, `POST /search` (an uploaded image), `GET /image?id=`
(a thumbnail from the gallery), `GET /healthz` and `GET /` (a web page).  The model and the index are loaded
once; queries are serialised (one model call at a time); bad requests get a 4xx JSON error."""
import os
import threading
import time

import cv2
import numpy as np

from ..data.images import decode_image
from ..errors import Error
from ..search.query import search

MAX_K = 100
THUMBNAIL_SIDE = 256
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


def create_app(model, index, gallery=None, max_upload_bytes=10 << 20):
    """A FastAPI app over a loaded api.Model and search.SearchIndex (and a GalleryReader for thumbnails)."""
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="ERNIE-ViL 2.0 search", docs_url="/docs")
    lock = threading.Lock()
    k_limit = min(MAX_K, index.count)

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    def answer(**query):
        k = query.pop("k")
        if not 1 <= k <= k_limit:
            return error(400, f"k must be between 1 and {k_limit}, got {k}")
        start = time.perf_counter()
        try:
            with lock:
                results = search(model, index, k=k, **query)
        except Error as e:
            return error(400, str(e))
        return JSONResponse({"results": results, "seconds": round(time.perf_counter() - start, 4)})

    @app.exception_handler(RequestValidationError)
    def invalid(request, exc):
        problems = "; ".join(f"{'.'.join(map(str, p['loc'][1:])) or p['loc'][0]}: {p['msg']}" for p in exc.errors())
        return error(422, problems)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "count": index.count, "dim": index.dim, "kind": index.manifest["kind"],
                "backend": index.manifest["backend"], "thumbnails": gallery is not None}

    @app.get("/search")
    def search_text(text: str = Query(..., max_length=2000), k: int = 10):
        if not text.strip():
            return error(400, "the text query is empty")
        return answer(text=text, k=k)

    @app.post("/search")
    async def search_image(request: Request, image: UploadFile = File(...), k: int = 10):
        data = await image.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            return error(413, f"the upload is over the limit of {max_upload_bytes} bytes")
        if not data:
            return error(400, "the upload is empty")
        try:
            rgb = decode_image(data, max_pixels=model.max_image_pixels)
        except ValueError as e:
            return error(400, f"not a usable image: {e}")
        return answer(image=rgb, k=k)

    @app.get("/image")
    def thumbnail(id: str):  # noqa: A002 - the query parameter's public name
        if gallery is None:
            return error(404, "this index has no gallery to show images from (build it with --gallery)")
        try:
            data = gallery.image_bytes(id)
        except OSError:
            data = None
        if data is None:
            return error(404, f"no image {id!r} in this gallery")
        try:
            return Response(_thumbnail(data), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
        except ValueError as e:
            return error(404, f"image {id!r} cannot be shown: {e}")

    _install_index_routes(app, model, index, lock, max_upload_bytes)

    @app.get("/", response_class=HTMLResponse)
    def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    return app


def _install_index_routes(app, model, index, lock, max_upload_bytes):
    """Filtered, composed and batch queries and duplicate groups (serve/index_routes.py)."""
    from .index_routes import LockedHost, install
    install(app, LockedHost(model, lambda: index, lock), max_upload_bytes=max_upload_bytes)


def _thumbnail(data):
    rgb = decode_image(data)
    h, w = rgb.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("cannot encode a thumbnail")
    return jpeg.tobytes()


def load_app(config, overrides, index_dir, max_upload_bytes=10 << 20):
    """The app for `python -m ernievil2 serve`: the index first (a missing one fails fast), then the model."""
    from ..api.model import model_from_config
    from ..infer.options import load_query_config
    from ..search.index import SearchIndex
    index = SearchIndex(index_dir)
    model = model_from_config(load_query_config(config, overrides))
    return create_app(model, index, index.gallery_reader(), max_upload_bytes)
