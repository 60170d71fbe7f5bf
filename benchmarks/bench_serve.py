"""Load test of `python -m ernievil2 serve`: N concurrent clients (a share of them uploading images) query the
service for a fixed time while a prober checks /healthz every 50 ms; reports p50/p99 latency of text searches,
image searches and /healthz, and how many requests were answered 200 / 503 (queue full) / 504 (timeout).

    python benchmarks/bench_serve.py                       # a self-contained tiny model and a 200-image index
    python benchmarks/bench_serve.py --serve CONFIG INDEX_DIR [-o key=value ...]   # your model and index

Loopback only (127.0.0.1), bounded (--seconds of load; the server runs under `timeout` and is stopped at the
end, so it goes away by itself even if this script is killed)."""
import argparse
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "packages"))

TINY_VISION = {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "heads": 2}
TINY_TEXT = {"vocab_size": 40000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
QUERIES = ["红色的汽车停在路边", "一只猫在沙发上睡觉", "海边的日落", "a dog playing in the snow", "城市夜景",
           "蓝色的圆形", "绿色的三角形在左边", "两个人在公园散步"]


def tiny_setup(workdir, vocab, images):
    """A random-init tiny model (the real vocabulary), `images` photos and a flat index over them."""
    import cv2
    import yaml

    from ernievil2.infer.gallery import load_embed_config, run_embed
    from ernievil2.model.configs import ModelConfig
    from ernievil2.model.dual_encoder import ErnieViL2
    from ernievil2.model.weights import save_weights
    from ernievil2.search.index import build_index
    if not os.path.isfile(vocab):
        raise SystemExit(f"{vocab}: vocab.txt not found (give --vocab, or --serve CONFIG INDEX_DIR)")
    weights = save_weights(ErnieViL2(ModelConfig.build(dict(TINY_VISION), dict(TINY_TEXT))),
                           os.path.join(workdir, "tiny.pdparams"))
    text_json = os.path.join(workdir, "tiny_text.json")
    with open(text_json, "w") as f:
        json.dump(TINY_TEXT, f)
    photos = os.path.join(workdir, "photos")
    os.makedirs(photos)
    rng = np.random.default_rng(0)
    for i in range(images):
        cv2.imwrite(os.path.join(photos, f"{i:05d}.jpg"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    cfg = {"vocab_file": vocab, "init_from_params": weights, "text_model_config": text_json,
           "vision_model": dict(TINY_VISION), "image_size": 64, "device": "cpu", "engine": "eager",
           "progress": False, "num_workers": 0}
    config = os.path.join(workdir, "tiny.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f, allow_unicode=True)
    npz = os.path.join(workdir, "g.npz")
    run_embed(load_embed_config(config, [("images", photos), ("output_file", npz)]))
    build_index(npz, os.path.join(workdir, "index"), log=lambda _: None)
    return config, os.path.join(workdir, "index"), photos


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config, index_dir, overrides, args):
    port = free_port()
    budget = int(args.seconds + 300)  # the server dies by itself after this, whatever happens here
    command = ["timeout", str(budget), sys.executable, "-m", "ernievil2", "serve", config, index_dir,
               "--port", str(port), "--workers", str(args.workers), "--queue", str(args.queue),
               "--timeout", str(args.timeout)] + [a for o in overrides for a in ("-o", o)]
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.time() + 240
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)


def run_load(url, uploads, args):
    import httpx
    results = {"text": [], "image": [], "healthz": []}  # (seconds, status)
    lock = threading.Lock()
    stop_at = time.time() + args.seconds

    def record(kind, seconds, status):
        with lock:
            results[kind].append((seconds, status))

    def client(seed):
        rnd = random.Random(seed)
        with httpx.Client(base_url=url, timeout=args.timeout + 30) as http:
            while time.time() < stop_at:
                start = time.perf_counter()
                try:
                    if rnd.random() < args.upload_share:
                        kind = "image"
                        r = http.post("/search", params={"k": 10},
                                      files={"image": ("q.jpg", rnd.choice(uploads), "image/jpeg")})
                    else:
                        kind = "text"
                        r = http.get("/search", params={"text": rnd.choice(QUERIES), "k": 10})
                    status = r.status_code
                except httpx.HTTPError:
                    status = "error"
                record(kind, time.perf_counter() - start, status)
                if status == 503:
                    time.sleep(0.05)  # a polite client backs off a little

    def prober():
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.time() < stop_at:
                start = time.perf_counter()
                try:
                    status = http.get("/healthz").status_code
                except httpx.HTTPError:
                    status = "error"
                record("healthz", time.perf_counter() - start, status)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results, seconds):
    rows = []
    for kind, items in results.items():
        if not items:
            continue
        ok = np.array([s for s, status in items if status == 200])
        statuses = {}
        for _, status in items:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        rows.append({"endpoint": {"text": "GET /search", "image": "POST /search", "healthz": "GET /healthz"}[kind],
                     "requests": len(items), "ok_per_s": round(len(ok) / seconds, 1),
                     "p50_ms": round(1000 * float(np.percentile(ok, 50)), 1) if len(ok) else None,
                     "p99_ms": round(1000 * float(np.percentile(ok, 99)), 1) if len(ok) else None,
                     "max_ms": round(1000 * float(ok.max()), 1) if len(ok) else None, "statuses": statuses})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "INDEX_DIR"), help="your model config and index")
    parser.add_argument("--uploads-from", help="a folder of images to upload (default: the tiny gallery's)")
    parser.add_argument("--vocab", default=os.path.join(os.environ.get("ERNIEVIL2_SHARED", "../shared"),
                                                        "ernie_base_3.0", "vocab.txt"))
    parser.add_argument("--images", type=int, default=200, help="tiny setup: gallery size")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--upload-share", type=float, default=0.25, help="share of requests that upload an image")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as workdir:
        if args.serve:
            config, index_dir = args.serve
            photos = args.uploads_from
        else:
            config, index_dir, photos = tiny_setup(workdir, args.vocab, args.images)
        names = sorted(os.listdir(photos))[:20] if photos else []
        uploads = [read_bytes(os.path.join(photos, n)) for n in names]
        if not uploads:
            args.upload_share = 0.0
        proc, url = start_server(config, index_dir, args.overrides, args)
        try:
            results = run_load(url, uploads, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.clients} clients for {args.seconds:g} s, {args.upload_share:.0%} uploads, server --workers "
          f"{args.workers} --queue {args.queue}; CPU: {os.cpu_count()} logical cores")
    for row in summary(results, args.seconds):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
