"""The guards in front of every route: a body over the limit is refused from its Content-Length before it is
read (and while a chunked one streams in); the Host header must name this service (DNS rebinding); reloading is
for loopback clients; error bodies carry no absolute path and no bytes of the files or uploads."""
import json
import socket
import time

import pytest
from serve_testkit import index_folder, running, tiny_model, write_photos

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed")

NAMES = ["a.png", "b.png", "c.png"]
UPLOAD_LIMIT = 50_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    root = tmp_path_factory.mktemp("guards")
    model = tiny_model()
    write_photos(root / "photos", NAMES)
    index_folder(model, root / "photos", NAMES, root / "index", root / "g.npz")
    settings = ServeSettings(max_upload_bytes=UPLOAD_LIMIT, allow_hosts=("photos.lan",), reload_seconds=0)
    return create_app(model, str(root / "index"), settings), settings, root


def raw_exchange(url, head, body_parts=(), wait=5.0):
    """Send a request head and some body bytes on a raw socket; return the status line and the JSON body of the
    answer, and how long it took to come."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head.encode("latin-1"))
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return head_part.split(b"\r\n")[0].decode(), json.loads(body), time.perf_counter() - start


def test_a_huge_content_length_is_refused_before_the_body_is_read(setup):
    app, settings, _ = setup
    with running(app) as url:
        head = ("POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                "Content-Length: 3000000000\r\n\r\n")
        status, body, seconds = raw_exchange(url, head, [b"--xyz\r\n"])  # 3 GB promised, 7 bytes sent
    assert status.split()[1] == "413" and seconds < 3
    assert body["error"] == f"the request body is over the limit of {settings.max_body_bytes} bytes"


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(setup):
    app, settings, _ = setup
    first = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
             b"Content-Type: image/png\r\n\r\n")
    chunk = b"x" * 65536
    parts = [b"%x\r\n%s\r\n" % (len(c), c) for c in [first] + [chunk] * (settings.max_body_bytes // len(chunk) + 40)]
    with running(app) as url:
        head = ("POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")
        status, body, _ = raw_exchange(url, head, parts)
        assert status.split()[1] == "413" and "over the limit" in body["error"]
        import httpx
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # and it keeps serving


@pytest.mark.parametrize("host,allowed", [
    ("localhost:8000", True), ("127.0.0.1", True), ("[::1]:8000", True), ("photos.lan:8000", True),
    ("PHOTOS.LAN", True), ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.nip.io", False),
    ("localhost.evil.example", False),
])
def test_the_host_header_must_name_this_service(setup, host, allowed):
    from fastapi.testclient import TestClient
    client = TestClient(setup[0], base_url="http://localhost")
    response = client.get("/search", params={"text": "猫", "k": 1}, headers={"host": host})
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and "DNS rebinding" in response.json()["error"]
        assert client.get("/image", params={"id": "a.png"}, headers={"host": host}).status_code == 400


def test_a_wildcard_bind_answers_ip_literals_and_star_allows_any_host(setup):
    from ernievil2.serve.guards import GuardMiddleware
    guard = GuardMiddleware(None, "0.0.0.0")
    assert guard._host_problem("192.168.1.20:8000") is None and guard._host_problem("[fe80::1]") is None
    assert guard._host_problem("rebind.example") is not None
    assert GuardMiddleware(None, "127.0.0.1", ("*",))._host_problem("anything.example") is None
    assert GuardMiddleware(None, "127.0.0.1")._host_problem("") == "the request has no Host header"


def test_reload_is_for_loopback_clients_only(setup):
    from fastapi.testclient import TestClient
    client = TestClient(setup[0], base_url="http://localhost")  # its client address is "testclient"
    response = client.post("/admin/reload")
    assert response.status_code == 403 and "this machine only" in response.json()["error"]


def test_error_bodies_carry_no_absolute_paths_or_file_bytes(setup, monkeypatch):
    from fastapi.testclient import TestClient
    app, _, root = setup
    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    secret = b"SECRET-PAYLOAD-0123456789"
    answers = [client.post("/search", files={"image": ("x.png", secret, "image/png")})]
    (root / "photos" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + secret)  # a gallery file gone bad
    answers.append(client.get("/image", params={"id": "b.png"}))
    (root / "photos" / "c.png").unlink()
    answers.append(client.get("/image", params={"id": "c.png"}))
    service = app.state.service

    def broken(*_args, **_kwargs):
        raise RuntimeError(f"engine failed reading {root}/model/weights.pdparams")
    monkeypatch.setattr(service.model, "encode_text", broken)
    answers.append(client.get("/search", params={"text": "猫", "k": 1}))
    assert [a.status_code for a in answers] == [400, 404, 404, 500]
    for answer in answers:
        text = answer.text
        assert "SECRET" not in text and str(root) not in text and "/tmp" not in text and "\\x" not in text, text
        assert answer.json()["error"]


def test_public_message_strips_paths_and_byte_reprs():
    from ernievil2.serve.service import public_message
    assert public_message("/data/idx/manifest.json: unreadable") == "manifest.json: unreadable"
    assert public_message("bytes starting b'\\x89PNG\\r\\n' are not an image") == \
        "bytes starting <bytes> are not an image"
    assert public_message(r"C:\Users\me\g.tsv: bad") == "g.tsv: bad"
    assert public_message("k must be between 1 and 5, got 10") == "k must be between 1 and 5, got 10"
