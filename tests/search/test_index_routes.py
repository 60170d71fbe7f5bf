"""HTTP routes of the living index (serve/index_routes.py) through FastAPI's TestClient: filtered, composed and
batch answers equal the library's, duplicate groups equal search.duplicates, bad requests get a 4xx and the
service keeps answering."""
import base64
import json

import cv2
import numpy as np
import pytest

from conftest import VOCAB, make_tiny_model, need_shared, spread

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("fastapi", reason="fastapi is not installed")


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    from fastapi.testclient import TestClient

    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.fileio import NpzWriter
    from ernievil2.infer.engines import EagerEncoder
    from ernievil2.search.index import SearchIndex, build_index
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    need_shared(VOCAB)
    root = tmp_path_factory.mktemp("routes")
    model = Model(EagerEncoder(spread(make_tiny_model(seed=5))), ErnieTokenizer.from_file(VOCAB), image_size=32)
    images = [np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8) for i in range(12)]
    images[11] = images[10].copy()  # a duplicate pair
    ids = [f"img{i:02d}" for i in range(12)]
    writer = NpzWriter(str(root / "g.npz"), matrices=("embeddings",), strings=("ids",))
    writer.add(ids=ids, embeddings=model.encode_image(images))
    writer.finish(extra={"provenance": np.array(json.dumps({"kind": "images"}))})
    (root / "meta.jsonl").write_text("".join(json.dumps({"id": i, "folder": "ab"[n % 2], "size": n * 10}) + "\n"
                                             for n, i in enumerate(ids)))
    build_index(str(root / "g.npz"), root / "index", metadata=str(root / "meta.jsonl"), log=lambda _: None)
    index = SearchIndex(str(root / "index"))
    app = create_app(model, str(root / "index"), ServeSettings(max_batch=4, max_upload_bytes=50_000,
                                                               reload_seconds=0))
    with TestClient(app, base_url="http://localhost") as client:  # as `serve` runs it, lifespan and all
        yield client, model, index, images


def data_url(rgb):
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()).decode()


def test_fields_and_filtered_queries_equal_the_library(routes):
    from ernievil2.search.query import search
    client, model, index, _ = routes
    assert client.get("/search/fields").json()["fields"] == {"folder": "string", "id": "string", "size": "number"}
    for where in ({"folder": "a"}, ["folder=b", "size>=30"], {"size": {"lt": 50}}):
        response = client.post("/search/query", json={"text": "红色的汽车", "k": 4, "where": where})
        assert response.status_code == 200, response.text
        expected = search(model, index, text="红色的汽车", k=4,
                          where=index.fields.check(where if isinstance(where, dict) else
                                                   {"folder": "b", "size": {"gte": "30"}}))
        assert response.json()["results"] == expected


def test_composed_query_with_an_image_equals_the_library(routes):
    from ernievil2.search.query import search
    client, model, index, images = routes
    terms = [{"text": "红色汽车"}, {"image": data_url(images[3]), "weight": 0.5}, {"text": "雨天", "weight": -1}]
    response = client.post("/search/query", json={"terms": terms, "k": 5})
    assert response.status_code == 200, response.text
    decoded = [terms[0], {"image": images[3], "weight": 0.5}, terms[2]]  # PNG is lossless
    assert response.json()["results"] == search(model, index, terms=decoded, k=5)


def test_batch_equals_the_library_and_is_limited(routes):
    from ernievil2.search.query import search_batch
    client, model, index, images = routes
    queries = ["猫", {"image": data_url(images[5]), "k": 2}, {"text": "狗", "where": {"folder": "a"}}]
    response = client.post("/search/batch", json={"queries": queries, "k": 3})
    assert response.status_code == 200, response.text
    library = [queries[0], {"image": images[5], "k": 2}, queries[2]]
    assert response.json()["results"] == search_batch(model, index, library, k=3)
    assert response.json()["results"][1][0]["id"] == "img05"
    over = client.post("/search/batch", json={"queries": ["a"] * 5})
    assert over.status_code == 413 and "over the limit of 4" in over.json()["error"]


def test_duplicate_groups(routes):
    from ernievil2.search.duplicates import duplicate_groups
    client, _, index, _ = routes
    body = client.get("/duplicates", params={"threshold": 0.999}).json()
    assert body["groups"] == duplicate_groups(index, 0.999)
    assert ["img10", "img11"] in [g["ids"] for g in body["groups"]]
    assert [g["ids"] for g in client.get("/duplicates", params={"threshold": 0.999, "id": "img11"}).json()["groups"]] \
        == [["img10", "img11"]]
    assert client.get("/duplicates", params={"threshold": 3}).status_code == 422


@pytest.mark.parametrize("path, body, status, message", [
    ("/search/query", {"text": "x", "where": {"colour": "red"}}, 400, "unknown filter field 'colour'"),
    ("/search/query", {"text": "x", "where": {"size": "big"}}, 400, "'big' is not a number"),
    ("/search/query", {"text": "x", "where": ["size>>3"]}, 400, "not a number"),
    ("/search/query", {"terms": []}, 400, "needs at least one term"),
    ("/search/query", {"terms": [{"text": "a"}, {"text": "a", "weight": -1}]}, 400, "cancel out"),
    ("/search/query", {"text": "x", "k": 0}, 400, "k must be an integer between 1 and 12"),
    ("/search/query", {"image": "not base64!"}, 400, "not valid base64"),
    ("/search/query", {"image": base64.b64encode(b"junk").decode()}, 400, "not a usable image"),
    ("/search/query", {"text": "x", "colour": 1}, 400, "unknown key(s) colour"),
    ("/search/batch", {"queries": []}, 400, "non-empty list"),
    ("/search/batch", {"queries": ["a", 3]}, 400, "query 2: expected a text or an object"),
])
def test_bad_requests_are_4xx_and_the_service_keeps_answering(routes, path, body, status, message):
    client = routes[0]
    response = client.post(path, json=body)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert client.post(path, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/search/query", json={"text": "ok", "k": 1}).status_code == 200


def test_page_carries_the_query_in_its_url():
    import os

    from ernievil2.serve import index_routes
    page = open(os.path.join(os.path.dirname(index_routes.__file__), "page.html"), encoding="utf-8").read()
    assert "URLSearchParams(location.search)" in page and "history.replaceState" in page
    assert 'id="where"' in page and 'id="minus"' in page and "/search/query" in page and "/duplicates?" in page
