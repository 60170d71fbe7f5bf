"""The HTTP service through FastAPI's TestClient: answers equal the library's search, every bad request is a 4xx
JSON error (and the service keeps answering), thumbnails come only from the gallery."""
import json

import cv2
import numpy as np
import pytest

from conftest import VOCAB, make_tiny_model, need_shared

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e \".[search]\")")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e \".[search]\")")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from fastapi.testclient import TestClient

    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.infer.engines import EagerEncoder
    from ernievil2.search.index import SearchIndex, build_index
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    need_shared(VOCAB)
    root = tmp_path_factory.mktemp("svc")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    names = ["a.png", "b.jpg", "sub/c.png", "sub/d.webp", "e.bmp"]
    for i, name in enumerate(names):
        rgb = np.random.default_rng(i).integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)
        cv2.imwrite(str(photos / name), rgb)
    (root / "secret.txt").write_text("not part of the gallery")
    model = Model(EagerEncoder(make_tiny_model(seed=5)), ErnieTokenizer.from_file(VOCAB), image_size=32)
    vectors = model.encode_image([str(photos / n) for n in names])
    from ernievil2.fileio import NpzWriter
    writer = NpzWriter(str(root / "g.npz"), matrices=("embeddings",), strings=("ids",))
    writer.add(ids=names, embeddings=vectors)
    writer.finish(extra={"provenance": np.array(json.dumps({"kind": "images", "source": str(photos)}))})
    build_index(str(root / "g.npz"), root / "index", log=lambda _: None)
    index = SearchIndex(str(root / "index"))
    app = create_app(model, str(root / "index"), ServeSettings(max_upload_bytes=50_000, reload_seconds=0))
    return TestClient(app, base_url="http://localhost"), model, index, photos


def test_health_page_and_text_search_equal_the_library(service):
    from ernievil2.search.query import search
    client, model, index, _ = service
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "count": 5, "dim": 32, "kind": "flat", "backend": "faiss", "version": 1,
                      "thumbnails": True, "queue": 0}
    response = client.get("/search", params={"text": "红色的汽车停在路边", "k": 3})
    assert response.status_code == 200
    assert response.json()["results"] == search(model, index, text="红色的汽车停在路边", k=3)
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/search" in page.text


def test_image_upload_finds_itself(service):
    client, _, _, photos = service
    data = (photos / "sub" / "c.png").read_bytes()
    response = client.post("/search", params={"k": 2}, files={"image": ("c.png", data, "image/png")})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["id"] == "sub/c.png" and results[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("request_args,status,message", [
    (("get", "/search", {"params": {"text": "   "}}), 400, "the text query is empty"),
    (("get", "/search", {"params": {}}), 422, "text"),
    (("get", "/search", {"params": {"text": "猫", "k": 0}}), 400, "k must be between 1 and 5"),
    (("get", "/search", {"params": {"text": "猫", "k": 99}}), 400, "k must be between 1 and 5"),
    (("get", "/search", {"params": {"text": "猫", "k": "many"}}), 422, "k"),
    (("post", "/search", {"files": {"image": ("x.txt", b"plain text, not an image", "text/plain")}}), 400,
     "not a usable image"),
    (("post", "/search", {"files": {"image": ("big.png", b"\x89PNG" + b"0" * 60_000, "image/png")}}), 413,
     "over the limit of 50000 bytes"),
    (("post", "/search", {"files": {"image": ("e.png", b"", "image/png")}}), 400, "the upload is empty"),
    (("post", "/search", {}), 422, "image"),
    (("get", "/image", {"params": {"id": "../secret.txt"}}), 404, "no image"),
    (("get", "/image", {"params": {"id": "/etc/passwd"}}), 404, "no image"),
    (("get", "/image", {"params": {"id": "nothere.png"}}), 404, "no image"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_service_keeps_running(service, request_args, status, message):
    client = service[0]
    method, path, kwargs = request_args
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_thumbnails_are_small_jpegs_of_gallery_images(service):
    client, _, _, photos = service
    response = client.get("/image", params={"id": "sub/d.webp"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(photos / "sub" / "d.webp"))
    assert thumb.shape == original.shape  # small images keep their size
    same = cv2.imdecode(cv2.imencode(".jpg", original, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_COLOR)
    assert np.abs(thumb.astype(int) - same.astype(int)).max() <= 1  # a JPEG of that very picture
