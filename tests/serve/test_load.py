"""A busy service stays responsive: model work runs on a bounded worker pool, so /healthz answers at once while
every worker is stuck in a slow model call; past the queue's bound requests get a 503 with Retry-After, and a
request whose model call outlives the timeout gets a 504 (its worker place is kept until the call ends)."""
import threading
import time

import httpx
import pytest
from serve_testkit import index_folder, running, tiny_model, write_photos

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed")

NAMES = [f"p{i}.png" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    model = tiny_model()
    write_photos(root / "photos", NAMES)
    index_folder(model, root / "photos", NAMES, root / "index", root / "g.npz")
    return model, root


def slowed(fn, seconds):
    def slow(*args, **kwargs):
        time.sleep(seconds)  # time.sleep releases the GIL, as the engines' kernels do
        return fn(*args, **kwargs)
    return slow


def test_healthz_answers_at_once_while_uploads_and_queries_saturate_the_model(setup, monkeypatch):
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    model, root = setup
    monkeypatch.setattr(model, "encode_text", slowed(model.encode_text, 1.0))
    monkeypatch.setattr(model, "encode_image", slowed(model.encode_image, 1.0))
    app = create_app(model, str(root / "index"), ServeSettings(workers=2, queue_size=4, timeout=60,
                                                              reload_seconds=0))
    upload = (root / "photos" / "p1.png").read_bytes()
    answers = []

    with running(app) as url, httpx.Client(base_url=url, timeout=90) as client:
        def query(i):
            if i % 8 == 0:  # uploads among the text queries
                r = client.post("/search", params={"k": 3}, files={"image": ("p.png", upload, "image/png")})
            else:
                r = client.get("/search", params={"text": f"查询 {i}", "k": 3})
            answers.append(r)
        threads = [threading.Thread(target=query, args=(i,)) for i in range(44)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        health_seconds = []
        for _ in range(3):
            start = time.perf_counter()
            health = client.get("/healthz")
            health_seconds.append(time.perf_counter() - start)
            assert health.status_code == 200
        busy = health.json()["queue"]
        for t in threads:
            t.join()
    assert sorted(health_seconds)[1] < 0.5 and max(health_seconds) < 1.0, health_seconds  # before: 6.8 s
    assert 1 <= busy <= 6  # the pool's bound: 2 running + 4 waiting
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    assert 2 <= statuses.count(200) <= 8  # at most the 6 admitted, plus any admitted as places freed up
    refused = [r for r in answers if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"] for r in refused)
    ok = next(r for r in answers if r.status_code == 200)
    assert len(ok.json()["results"]) == 3


def test_a_request_past_its_timeout_gets_a_504_and_its_place_is_kept_until_the_call_ends(setup, monkeypatch):
    from fastapi.testclient import TestClient

    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    model, root = setup
    monkeypatch.setattr(model, "encode_text", slowed(model.encode_text, 1.5))
    app = create_app(model, str(root / "index"), ServeSettings(workers=1, queue_size=0, timeout=0.3,
                                                              reload_seconds=0))
    client = TestClient(app, base_url="http://localhost")
    start = time.perf_counter()
    response = client.get("/search", params={"text": "慢", "k": 2})
    assert response.status_code == 504 and "took too long" in response.json()["error"]
    assert time.perf_counter() - start < 1.2
    assert client.get("/healthz").json()["queue"] == 1  # the model call still runs: its place is taken
    refused = client.get("/search", params={"text": "再来", "k": 2})
    assert refused.status_code == 503 and "retry-after" in refused.headers
    time.sleep(1.5)
    assert client.get("/healthz").json()["queue"] == 0
