"""Thumbnails: bounded in size, cached (a repeated view decodes nothing; a changed file is drawn again), decoded
under the model's pixel limit; a TSV gallery edited after the index was built is detected (its fingerprint, and
the id of the row an offset points at) and refused with a 409 instead of showing another row's picture."""
import base64
import os

import cv2
import numpy as np
import pytest
from serve_testkit import index_folder, tiny_model

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("fastapi", reason="fastapi is not installed")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def client_for(model, index_dir):
    from fastapi.testclient import TestClient

    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    return TestClient(create_app(model, str(index_dir), ServeSettings(reload_seconds=0)), base_url="http://localhost")


def picture(seed, h, w):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def shape_of(response):
    assert response.status_code == 200, response.text
    return cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR).shape[:2]


def test_thumbnails_are_bounded_cached_and_redrawn_when_the_file_changes(model, tmp_path, monkeypatch):
    from ernievil2.serve import thumbnails
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "wide.png"), picture(0, 300, 900))
    index_folder(model, photos, ["wide.png"], tmp_path / "index", tmp_path / "g.npz")
    client = client_for(model, tmp_path / "index")
    decoded = []
    real_decode = thumbnails.decode_image
    monkeypatch.setattr(thumbnails, "decode_image", lambda *a, **kw: decoded.append(1) or real_decode(*a, **kw))
    assert shape_of(client.get("/image", params={"id": "wide.png"})) == (85, 256)  # the default side
    assert shape_of(client.get("/image", params={"id": "wide.png"})) == (85, 256)
    assert len(decoded) == 1  # the second view came from the cache
    assert shape_of(client.get("/image", params={"id": "wide.png", "size": 64})) == (21, 64)
    assert client.get("/image", params={"id": "wide.png", "size": 5000}).status_code == 422  # bounded
    cv2.imwrite(str(photos / "wide.png"), picture(1, 100, 1000))
    os.utime(photos / "wide.png", ns=(1, 1))  # a new mtime even on coarse clocks
    assert shape_of(client.get("/image", params={"id": "wide.png"})) == (26, 256)  # drawn again, not stale
    assert len(decoded) == 3


def test_thumbnails_honour_the_pixel_limit(model, tmp_path):
    from ernievil2.api import Model
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "big.png"), picture(0, 300, 900))
    index_folder(model, photos, ["big.png"], tmp_path / "index", tmp_path / "g.npz")
    limited = Model(model.encoder, model.tokenizer, image_size=32, max_image_pixels=300 * 900 - 1)
    response = client_for(limited, tmp_path / "index").get("/image", params={"id": "big.png"})
    assert response.status_code == 404 and "over the limit of 269999" in response.json()["error"]


def tsv_gallery(model, tmp_path, ids):
    """A `image_id \\t base64` TSV gallery with equal-length rows, and an index built over it."""
    from ernievil2.fileio import NpzWriter
    from ernievil2.search.index import build_index
    images = {i: cv2.imencode(".png", picture(n, 20, 30))[1].tobytes() for n, i in enumerate(ids)}
    tsv = tmp_path / "gallery.tsv"
    tsv.write_bytes(b"".join(f"{i}\t".encode() + base64.b64encode(images[i]) + b"\n" for i in ids))
    writer = NpzWriter(str(tmp_path / "g.npz"), matrices=("embeddings",), strings=("ids",))
    writer.add(ids=ids, embeddings=model.encode_image([images[i] for i in ids]))
    writer.finish()
    build_index(str(tmp_path / "g.npz"), tmp_path / "index", gallery=str(tsv), log=lambda _: None)
    return tsv, images


def expected_jpeg(png):
    from ernievil2.serve.thumbnails import thumbnail_jpeg
    return thumbnail_jpeg(png, 256, None)


def test_an_edited_tsv_gallery_is_refused_not_misread(model, tmp_path):
    tsv, images = tsv_gallery(model, tmp_path, ["id0", "id1", "id2"])
    client = client_for(model, tmp_path / "index")
    assert client.get("/image", params={"id": "id1"}).content == expected_jpeg(images["id1"])
    original = tsv.read_bytes()
    stat = os.stat(tsv)

    os.utime(tsv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, content the same
    assert client.get("/image", params={"id": "id2"}).content == expected_jpeg(images["id2"])

    extra = b"new\t" + base64.b64encode(cv2.imencode(".png", picture(9, 8, 8))[1].tobytes()) + b"\n"
    tsv.write_bytes(extra + original)  # a row inserted above: every recorded offset is stale
    response = client.get("/image", params={"id": "id2"})
    assert response.status_code == 409, response.text
    message = response.json()["error"]
    assert "gallery.tsv changed after the index was built" in message and str(tmp_path) not in message

    rows = original.splitlines(keepends=True)
    tsv.write_bytes(rows[1] + rows[0] + rows[2])  # two rows swapped: same size ...
    os.utime(tsv, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime: only the row's id tells
    response = client.get("/image", params={"id": "id0"})
    assert response.status_code == 409 and "now holds another id" in response.json()["error"]

    tsv.write_bytes(original)
    os.utime(tsv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.get("/image", params={"id": "id0"}).content == expected_jpeg(images["id0"])


def test_the_fingerprint_is_recorded_in_the_manifest(model, tmp_path):
    import hashlib

    from ernievil2.search.index import read_manifest
    tsv, _ = tsv_gallery(model, tmp_path, ["a", "b"])
    fingerprint = read_manifest(str(tmp_path / "index"))["gallery"]["fingerprint"]
    assert fingerprint == {"size": os.path.getsize(tsv), "mtime_ns": os.stat(tsv).st_mtime_ns,
                           "sha256": hashlib.sha256(tsv.read_bytes()).hexdigest()}
