"""GET /metrics is Prometheus text (parsed here with prometheus-client's own parser): requests and errors by
endpoint template and status, latency histograms per endpoint, the pools' queue depth, the index size."""
import pytest
from serve_testkit import index_folder, tiny_model, write_photos

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("fastapi", reason="fastapi is not installed")


def test_metrics_count_what_was_asked(tmp_path):
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    model = tiny_model()
    names = ["a.png", "b.png", "c.png"]
    write_photos(tmp_path / "photos", names)
    index_folder(model, tmp_path / "photos", names, tmp_path / "index", tmp_path / "g.npz")
    client = TestClient(create_app(model, str(tmp_path / "index"), ServeSettings(reload_seconds=0)),
                        base_url="http://localhost")
    assert client.get("/search", params={"text": "猫", "k": 2}).status_code == 200
    assert client.get("/search", params={"text": "狗", "k": 3}).status_code == 200
    assert client.get("/search", params={"text": "猫", "k": 99}).status_code == 400
    assert client.get("/image", params={"id": "b.png"}).status_code == 200
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))
    assert value("ernievil2_http_requests_total", endpoint="/search", method="GET", status="200") == 2
    assert value("ernievil2_http_requests_total", endpoint="/search", method="GET", status="400") == 1
    assert value("ernievil2_http_requests_total", endpoint="/image", method="GET", status="200") == 1
    assert value("ernievil2_http_requests_total", endpoint="other", method="GET", status="404") == 1
    assert value("ernievil2_http_requests_total", endpoint="/healthz", method="GET", status="400") == 1
    assert value("ernievil2_http_errors_total", endpoint="/search", status="400") == 1
    assert value("ernievil2_http_errors_total", endpoint="/image", status="200") is None
    assert value("ernievil2_http_request_seconds_count", endpoint="/search") == 3
    assert value("ernievil2_http_request_seconds_bucket", endpoint="/search", le="+Inf") == 3
    assert value("ernievil2_queue_depth", pool="model") == 0
    assert value("ernievil2_queue_capacity", pool="model") == 2 + 32
    assert value("ernievil2_index_items") == 3 and value("ernievil2_index_version") == 1  # a first build
