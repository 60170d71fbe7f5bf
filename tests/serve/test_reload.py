"""A service that follows its index: while INDEX_DIR is rebuilt with more items (through build_index's folder
swap) under a steady load of queries, thumbnails and health checks, no request fails and the new items appear
without a restart, found by the manifest poll or on POST /admin/reload."""
import threading
import time

import httpx
import pytest
from serve_testkit import index_folder, running, tiny_model, write_photos

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed")

FIRST = [f"old{i}.png" for i in range(5)]
MORE = FIRST + [f"new{i}.png" for i in range(4)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def make_app(model, root, reload_seconds):
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    write_photos(root / "photos", MORE)
    index_folder(model, root / "photos", FIRST, root / "index", root / "g1.npz")
    return create_app(model, str(root / "index"), ServeSettings(reload_seconds=reload_seconds, queue_size=64))


def test_a_rebuilt_index_is_swapped_in_under_load_with_no_failed_request(model, tmp_path):
    app = make_app(model, tmp_path, reload_seconds=0.1)
    failures, done = [], []
    stop = threading.Event()

    def load(url, worker):
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    for r in (client.get("/search", params={"text": f"第{worker}张照片", "k": 5}),
                              client.get("/image", params={"id": "old1.png"}),
                              client.get("/healthz")):
                        if r.status_code != 200:
                            failures.append((r.request.url.path, r.status_code, r.text))
                        done.append(r.request.url.path)
                except httpx.HTTPError as e:
                    failures.append(("transport", repr(e)))

    with running(app) as url:
        threads = [threading.Thread(target=load, args=(url, w)) for w in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            before = len(done)
            for _ in range(3):  # several swaps, each a full rebuild into the same folder
                index_folder(model, tmp_path / "photos", MORE, tmp_path / "index", tmp_path / "g2.npz")
            deadline = time.time() + 20
            while httpx.get(f"{url}/healthz").json()["count"] != len(MORE):
                assert time.time() < deadline, "the rebuilt index was not picked up"
                time.sleep(0.05)
            time.sleep(0.5)
            results = httpx.get(f"{url}/search", params={"text": "照片", "k": len(MORE)}).json()["results"]
            reloads = app.state.service.live.reloads
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == []
    assert len(done) > before + 10  # requests kept coming during the swaps
    assert sorted(hit["id"] for hit in results) == sorted(MORE)
    assert reloads >= 1


def test_admin_reload_swaps_on_demand(model, tmp_path):
    app = make_app(model, tmp_path, reload_seconds=0)  # no polling: only the explicit trigger
    # every build of an index folder counts its manifest "version" up: 1 for the first, 2 for the rebuild
    with running(app) as url:
        assert httpx.post(f"{url}/admin/reload").json() == {"reloaded": False, "count": 5, "version": 1}
        index_folder(model, tmp_path / "photos", MORE, tmp_path / "index", tmp_path / "g2.npz")
        time.sleep(0.3)
        assert httpx.get(f"{url}/healthz").json()["count"] == 5  # not followed by itself
        assert httpx.post(f"{url}/admin/reload").json() == {"reloaded": True, "count": 9, "version": 2}
        assert httpx.get(f"{url}/healthz").json()["count"] == 9
        (tmp_path / "index" / "manifest.json").write_text("{ not json")
        broken = httpx.post(f"{url}/admin/reload")
        assert broken.status_code == 409 and "keeps serving" in broken.json()["error"]
        assert str(tmp_path) not in broken.text
        assert httpx.get(f"{url}/search", params={"text": "照片", "k": 9}).status_code == 200
