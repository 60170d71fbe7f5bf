"""`POST /v1/embeddings` in the shape of OpenAI's embeddings API, so that existing clients and RAG frameworks
embed with this model unchanged.  `input`: a string or a list of strings, each a text or an image data URL
(`data:image/png;base64,...`), texts and images mixed freely; `encoding_format`: float (default) or base64
(little-endian float32, what the official client asks for by default); `model` is echoed back.  Usage counts
the texts' tokens ([CLS] and [SEP] included, after truncation); images count none.  Errors come in OpenAI's
error shape (app.py)."""
import base64
import re

import numpy as np
from fastapi import APIRouter, Request

from ..data.images import decode_base64, decode_image
from .service import ServiceError

DEFAULT_MODEL_NAME = "ernie-vil-2.0"
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def embeddings_router(service):
    router = APIRouter()
    settings = service.settings

    @router.post("/v1/embeddings")
    async def embeddings(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise ServiceError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ServiceError(400, "the request body must be a JSON object")
        model_name = body.get("model", DEFAULT_MODEL_NAME)
        if not isinstance(model_name, str):
            raise ServiceError(400, "model must be a string", param="model")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ServiceError(400, f"encoding_format must be float or base64, got {encoding!r}",
                               param="encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != service.model.embed_dim:
            raise ServiceError(400, f"this model's embeddings have {service.model.embed_dim} dimensions; "
                                    f"dimensions={dimensions!r} cannot be served", param="dimensions")
        items = parse_inputs(body.get("input"), settings.max_embedding_inputs, settings.max_upload_bytes)
        vectors, tokens = await service.run(embed_inputs, service, items)
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return router


def parse_inputs(value, max_inputs, max_image_bytes):
    """[("text", str) | ("image", base64 str)] from an `input` field, or a 400 naming what is wrong."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ServiceError(400, "input must be a non-empty string or a non-empty list of strings (texts or "
                                "image data URLs)", param="input")
    if len(value) > max_inputs:
        raise ServiceError(400, f"input has {len(value)} items, over the limit of {max_inputs} per request",
                           param="input")
    max_b64 = (max_image_bytes + 2) // 3 * 4
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            what = "token ids" if isinstance(item, (int, list)) else type(item).__name__
            raise ServiceError(400, f"input[{i}]: {what} are not accepted here, only texts and image data URLs "
                                    f"(data:image/...;base64,...)", param="input")
        match = _DATA_URL.match(item)
        if match:
            payload = item[match.end():]
            if len(payload) > max_b64:
                raise ServiceError(413, f"input[{i}]: the image is over the limit of {max_image_bytes} bytes",
                                   param="input")
            items.append(("image", payload))
        elif item.startswith("data:"):
            raise ServiceError(400, f"input[{i}]: a data URL that is not a base64 image (expected "
                                    f"data:image/<type>;base64,...)", param="input")
        elif not item.strip():
            raise ServiceError(400, f"input[{i}]: the text is empty", param="input")
        else:
            items.append(("text", item))
    return items


def embed_inputs(service, items):
    """(float32 [N, D] in input order, token count) on a worker thread: images decoded, then one text batch and
    one image batch through the model."""
    model = service.model
    images = {}
    for i, (kind, payload) in enumerate(items):
        if kind == "image":
            try:
                images[i] = decode_image(decode_base64(payload), max_pixels=model.max_image_pixels)
            except ValueError as e:
                raise ServiceError(400, f"input[{i}]: not a usable image: {e}", param="input") from None
    texts = {i: payload for i, (kind, payload) in enumerate(items) if kind == "text"}
    out = np.empty((len(items), model.embed_dim), np.float32)
    with service.model_lock:
        if texts:
            out[list(texts)] = model.encode_text(list(texts.values()))
        if images:
            out[list(images)] = model.encode_image(list(images.values()))
    tokens = sum(len(model.tokenizer.encode(t, model.max_text_len)) for t in texts.values())
    return out, tokens


def _encoded(vector, encoding):
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")
    return vector.tolist()
