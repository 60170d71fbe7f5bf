"""What the service tests share: a tiny Model, a folder gallery indexed with it, and a real uvicorn server on
127.0.0.1 (an ephemeral port) in a thread of the test process, so that a test can monkeypatch the model it
serves; the server stops when the `with` block ends, or by itself after `lifetime` seconds."""
import contextlib
import json
import threading
import time

import cv2
import numpy as np

from conftest import VOCAB, make_tiny_model, need_shared


def tiny_model(**kwargs):
    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.infer.engines import EagerEncoder
    need_shared(VOCAB)
    return Model(EagerEncoder(make_tiny_model(seed=5)), ErnieTokenizer.from_file(VOCAB), image_size=32, **kwargs)


def write_photos(folder, names, seed=0, shape=(40, 60)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rgb = np.random.default_rng(seed + i).integers(0, 255, (shape[0] + i, shape[1], 3), dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rgb)


def index_folder(model, photos, names, index_dir, npz):
    """Embed photos/names with `model` and build (or rebuild, through build_index's folder swap) index_dir."""
    from ernievil2.fileio import NpzWriter
    from ernievil2.search.index import build_index
    vectors = model.encode_image([str(photos / n) for n in names])
    writer = NpzWriter(str(npz), matrices=("embeddings",), strings=("ids",))
    writer.add(ids=names, embeddings=vectors)
    writer.finish(extra={"provenance": np.array(json.dumps({"kind": "images", "source": str(photos)}))})
    build_index(str(npz), index_dir, log=lambda _: None)
    return vectors


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
