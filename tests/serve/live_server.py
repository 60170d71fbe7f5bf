"""A real uvicorn server on 127.0.0.1 (an ephemeral port) in a thread of the test process, so that a test can
monkeypatch the model it serves; it stops when the `with` block ends, or by itself after `lifetime` seconds."""
import contextlib
import threading
import time


@contextlib.contextmanager
def running(app, lifetime=120):
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    watchdog = threading.Timer(lifetime, lambda: setattr(server, "should_exit", True))
    watchdog.daemon = True
    watchdog.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            if not thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        watchdog.cancel()
        server.should_exit = True
        thread.join(timeout=15)
