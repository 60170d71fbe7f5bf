"""Routes of the living index: filtered and composed queries, batches and near-duplicate groups.

    GET  /search/fields                       the filterable fields of the index and their types
    POST /search/query   {"text" | "image" | "terms", "k", "where"}        one query -> {"results", "seconds"}
    POST /search/batch   {"queries": [query, ...], "k", "where"}             -> {"results": [[...], ...]}
    GET  /duplicates?threshold=0.95[&id=ID]   groups of near-duplicates (the group of ID only, when given)

An image is a data URL (`data:image/jpeg;base64,...`) or plain base64.  `where` is a filter object
({"folder": "cats", "size": {"gte": 1000}}, see search.filters) or a list of `FIELD=V` / `FIELD>=N` strings.
`terms` is a composed query: [{"text": "红色汽车"}, {"image": DATA_URL, "weight": 0.5}, {"text": "雨天",
"weight": -1}].  Bad requests (unknown field, wrong type, empty composed query, a batch over the limit) get a
4xx with a one-line message.

The routes need a host: `model`, `current_index()` (the SearchIndex to answer from, held for the whole request),
`async run(fn, *args)` (fn on a worker thread with the model serialised; library errors -> 400) and
`error(status, message)` (the exception the app turns into its error response): serve.app.ServiceHost."""
import base64
import binascii
import collections
import time
from typing import Optional

from fastapi import APIRouter, Query, Request

from ..data.images import decode_image
from ..errors import Error
from ..search.duplicates import duplicate_groups
from ..search.filters import parse_where
from ..search.query import search_batch

MAX_K = 100
DUPLICATE_CACHE = 4  # (index version, threshold) results kept


def index_router(host, max_batch=64, max_upload_bytes=10 << 20):
    router = APIRouter()
    duplicates_cache = collections.OrderedDict()
    max_body = max_batch * (max_upload_bytes * 4 // 3 + 1024) + (1 << 20)

    async def body_of(request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            raise host.error(413, f"the request body is over the limit of {max_body} bytes")
        try:
            body = await request.json()
        except ValueError:
            raise host.error(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise host.error(400, "the request body must be a JSON object")
        return body

    def checked_k(value, index):
        limit = min(MAX_K, index.count)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise host.error(400, f"k must be an integer between 1 and {limit}, got {value!r}")
        return value

    def checked_where(value, index):
        if value is None or value == {} or value == []:
            return None
        try:
            if isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    raise host.error(400, "where: a list of FIELD=VALUE strings, or an object")
                value = parse_where(value)
            if not isinstance(value, dict):
                raise host.error(400, "where must be an object of field: condition (or a list of FIELD=VALUE)")
            index.fields.check(value)  # unknown fields and wrong types: a 400 before any model work
        except Error as e:
            raise host.error(400, str(e)) from None
        return value

    def decoded_query(query, position, index):
        """A query of the request with its images decoded (bytes -> RGB) and its k and where checked."""
        if isinstance(query, str):
            query = {"text": query}
        if not isinstance(query, dict):
            raise host.error(400, f"query {position}: expected a text or an object with text, image or terms")
        query = dict(query)
        if "image" in query:
            query["image"] = image_of(query["image"], f"query {position}: image")
        if isinstance(query.get("terms"), list):
            query["terms"] = [dict(t, image=image_of(t["image"], f"query {position}: term {j + 1}: image"))
                              if isinstance(t, dict) and "image" in t else t
                              for j, t in enumerate(query["terms"])]
        if "k" in query:
            query["k"] = checked_k(query["k"], index)
        if "where" in query:
            query["where"] = checked_where(query["where"], index)
        return query

    def image_of(value, what):
        if not isinstance(value, str) or not value:
            raise host.error(400, f"{what}: expected a data URL or base64 string")
        data = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        if len(data) > max_upload_bytes * 4 // 3 + 4:
            raise host.error(413, f"{what}: over the limit of {max_upload_bytes} bytes")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise host.error(400, f"{what}: not valid base64") from None
        try:
            return decode_image(raw, max_pixels=host.model.max_image_pixels)
        except ValueError as e:
            raise host.error(400, f"{what}: not a usable image: {e}") from None

    @router.get("/search/fields")
    async def fields():
        index = host.current_index()
        return {"fields": index.fields.describe(), "count": index.count, "version": index.version}

    @router.post("/search/query")
    async def one_query(request: Request):
        body = await body_of(request)
        index = host.current_index()
        k = checked_k(body.pop("k", 10), index)
        query = await host.run(decoded_query, body, 1, index)
        start = time.perf_counter()
        results = await host.run(search_batch, host.model, index, [query], k)
        return {"results": results[0], "seconds": round(time.perf_counter() - start, 4)}

    @router.post("/search/batch")
    async def batch(request: Request):
        body = await body_of(request)
        queries = body.get("queries")
        if not isinstance(queries, list) or not queries:
            raise host.error(400, "queries must be a non-empty list")
        if len(queries) > max_batch:
            raise host.error(413, f"the batch holds {len(queries)} queries, over the limit of {max_batch}")
        index = host.current_index()
        k = checked_k(body.get("k", 10), index)
        where = checked_where(body.get("where"), index)

        def decode_all():
            return [decoded_query(q, i + 1, index) for i, q in enumerate(queries)]
        decoded = await host.run(decode_all)
        start = time.perf_counter()
        results = await host.run(search_batch, host.model, index, decoded, k, where, max_batch)
        return {"results": results, "seconds": round(time.perf_counter() - start, 4)}

    @router.get("/duplicates")
    async def duplicates(threshold: float = Query(..., ge=-1.0, le=1.0), id: Optional[str] = None):
        index = host.current_index()
        key = (index.dir, index.version, threshold)
        groups = duplicates_cache.get(key)
        if groups is None:
            groups = await host.run(duplicate_groups, index, threshold)
            duplicates_cache[key] = groups
            while len(duplicates_cache) > DUPLICATE_CACHE:
                duplicates_cache.popitem(last=False)
        if id is not None:
            groups = [g for g in groups if id in g["ids"]]
        return {"threshold": threshold, "groups": groups}

    return router
