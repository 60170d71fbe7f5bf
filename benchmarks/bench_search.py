"""Search index benchmark: build time, single-query latency and recall@10 of every index kind on N random
768-d unit vectors, and the latency of GET /search on a served index.

    python benchmarks/bench_search.py --sizes 100000,1000000 --workdir /tmp/bench_search
    python benchmarks/bench_search.py --serve CONFIG INDEX_DIR [-o key=value ...]   # GET /search p50/p95
    python benchmarks/bench_search.py --filtered --sizes 100000 --kinds flat,hnsw     # filtered query latency
    python benchmarks/bench_search.py --living --workdir /tmp/bench_living            # sync speed, batch vs single

--filtered: latency of one query restricted by a metadata filter of several selectivities (a field with 1000
values: 50%, 5%, 0.1% of the rows match), against the same query unfiltered.  --living: with the full-size Base
model (random weights: speed does not depend on the values), `index sync` of a folder of --images generated
640x480 JPEGs (a fresh index, then after adding 10%, replacing 5% and deleting 5%, then with nothing changed), and
--batch text queries answered by one search_batch call against one search call each.

Data: `clustered` (default: points around 1000 random centres, like embeddings of a real collection) or
`uniform` (no structure at all: the hardest case for approximate search).  Queries are fresh points of the same
distribution.  Recall@10 is against exact search; latency is per single query (k=10, one at a time)."""
import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "packages"))


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n, d, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return unit(rng.standard_normal((n, d), dtype=np.float32))
    centres = rng.standard_normal((1000, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):  # in blocks: bounded temporaries
        m = min(100_000, n - start)
        out[start:start + m] = centres[rng.integers(0, 1000, m)] + 0.6 * rng.standard_normal((m, d), np.float32)
    return unit(out)


def bench_kinds(args):
    from ernievil2.fileio import NpzWriter
    from ernievil2.search.index import SearchIndex, build_index
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = make_data(n, args.dim, args.data, seed=n)
        queries = make_data(args.queries, args.dim, args.data, seed=n + 1)
        gallery = os.path.join(args.workdir, f"gallery_{args.data}_{n}.npz")
        writer = NpzWriter(gallery, matrices=("embeddings",), strings=("ids",))
        for start in range(0, n, 100_000):
            block = data[start:start + 100_000]
            writer.add(ids=[f"{i:08d}" for i in range(start, start + len(block))], embeddings=block)
        writer.finish(extra={"provenance": np.array(json.dumps({"kind": "images"}))})
        qfile = os.path.join(args.workdir, f"queries_{args.data}_{n}.npz")
        writer = NpzWriter(qfile, matrices=("embeddings",), strings=("ids",))
        writer.add(ids=[f"q{i}" for i in range(len(queries))], embeddings=queries)
        writer.finish()
        truth = None
        for kind in args.kinds:
            out_dir = os.path.join(args.workdir, f"index_{args.data}_{n}_{kind}")
            start = time.perf_counter()
            manifest = build_index(gallery, out_dir, kind=kind, queries=qfile, sample=args.queries,
                                   log=lambda line: print(line, file=sys.stderr))
            build = time.perf_counter() - start
            index = SearchIndex(out_dir)
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                found.append([hit[0] for hit in index.search(q, 10)[0]])
                times.append(time.perf_counter() - t)
            if kind == "flat":
                truth = found
            recall = (np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) if truth else None)
            size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
            rows.append({"n": n, "kind": kind, "build_s": round(build, 1), "query_ms_p50": ms(times, 50),
                         "query_ms_p95": ms(times, 95), "recall_at_10": None if recall is None else round(recall, 4),
                         "params": manifest.get("search_params"), "index_mb": round(size / 2**20),
                         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10})
            print(json.dumps(rows[-1]), flush=True)
            del index
    print_table(rows, args)


def ms(times, pct):
    return round(1000 * float(np.percentile(times, pct)), 2)


def print_table(rows, args):
    print(f"\ndata: {args.data}, dim {args.dim}, {args.queries} queries, k=10, single-query latency")
    print("| vectors | kind | build (s) | query p50 (ms) | query p95 (ms) | recall@10 | search params | index (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        recall = "exact" if r["kind"] == "flat" else f"{r['recall_at_10']:.4f}"
        params = ", ".join(f"{k} {v}" for k, v in (r["params"] or {}).items()) or "-"
        print(f"| {r['n']:,} | {r['kind']} | {r['build_s']} | {r['query_ms_p50']} | {r['query_ms_p95']} | {recall} | "
              f"{params} | {r['index_mb']} |")


def bench_serve(args, overrides):
    """Start `python -m ernievil2 serve`, send sequential GET /search text queries, report p50/p95."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "ernievil2", "serve", args.serve[0], args.serve[1], "--port", str(port)]
    for item in overrides:
        command += ["-o", item]
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        queries = ["一个红色的圆形", "图中有两个蓝色的三角形", "画面中有一个黄色的星形和一个绿色的方块",
                   "左边有一个紫色的菱形"]
        times = []
        for i in range(args.requests + 5):
            t = time.perf_counter()
            query = urllib.parse.urlencode({"text": queries[i % len(queries)], "k": 10})
            urllib.request.urlopen(f"{url}/search?{query}", timeout=60).read()
            if i >= 5:  # the first requests warm the engine up
                times.append(time.perf_counter() - t)
        print(f"GET /search over HTTP, {len(times)} sequential text queries, k=10 (model time included): "
              f"p50 {ms(times, 50)} ms, p95 {ms(times, 95)} ms, mean {round(1000 * statistics.mean(times), 2)} ms")
    finally:
        proc.terminate()
        proc.wait()


def bench_filtered(args):
    """Filtered single-query latency (k=10) at each size, for each kind, by selectivity."""
    from ernievil2.fileio import NpzWriter
    from ernievil2.search.index import SearchIndex, build_index
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = make_data(n, args.dim, args.data, seed=n)
        queries = make_data(args.queries, args.dim, args.data, seed=n + 1)
        gallery = os.path.join(args.workdir, f"filtered_{n}.npz")
        writer = NpzWriter(gallery, matrices=("embeddings",), strings=("ids",))
        writer.add(ids=[f"{i:08d}" for i in range(n)], embeddings=data)
        writer.finish(extra={"provenance": np.array(json.dumps({"kind": "images"}))})
        meta = os.path.join(args.workdir, f"filtered_{n}.jsonl")
        with open(meta, "w") as f:  # bucket: 0..999, so bucket < b matches b/1000 of the rows
            f.writelines(json.dumps({"id": f"{i:08d}", "bucket": (i * 7919) % 1000}) + "\n" for i in range(n))
        qfile = os.path.join(args.workdir, f"filtered_queries_{n}.npz")
        writer = NpzWriter(qfile, matrices=("embeddings",), strings=("ids",))
        writer.add(ids=[f"q{i}" for i in range(len(queries))], embeddings=queries)
        writer.finish()
        exact = None
        for kind in args.kinds:
            out_dir = os.path.join(args.workdir, f"filtered_{n}_{kind}")
            build_index(gallery, out_dir, kind=kind, metadata=meta, sample=args.queries, queries=qfile,
                        log=lambda line: print(line, file=sys.stderr))
            index = SearchIndex(out_dir)
            _ = index.fields  # built once per index (the service keeps it), not per query
            for label, where in (("none", None), ("50%", {"bucket": {"lt": 500}}), ("10%", {"bucket": {"lt": 100}}),
                                 ("5%", {"bucket": {"lt": 50}}), ("0.1%", {"bucket": [7]})):
                times, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    found.append({hit[0] for hit in index.search(q, 10, where=where)[0]})
                    times.append(time.perf_counter() - t)
                truth = (exact or index).search(queries, 10, where=where)  # flat first: exact
                recall = np.mean([len(f & {h[0] for h in t}) / max(1, len(t)) for f, t in zip(found, truth)])
                rows.append({"n": n, "kind": kind, "filter": label, "p50_ms": ms(times, 50), "p95_ms": ms(times, 95),
                             "recall_at_10": round(float(recall), 4)})
                print(json.dumps(rows[-1]), flush=True)
            if kind == "flat":
                exact = index
    print(f"\n{args.queries} single queries, k=10, dim {args.dim}, {args.data} data; recall@10 against flat's "
          f"filtered search (list flat first)")
    print("| vectors | kind | rows matching | p50 (ms) | p95 (ms) | recall@10 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['kind']} | {r['filter']} | {r['p50_ms']} | {r['p95_ms']} | {r['recall_at_10']} |")


def bench_living(args):
    """index sync speed and batch vs single queries with the Base model (random weights)."""
    import shutil

    import cv2
    shared = os.environ.get("ERNIEVIL2_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    weights = os.path.join(work, "ref.pdparams")
    if not os.path.exists(weights):
        subprocess.run([sys.executable, os.path.join(shared, "reference", "make_reference_checkpoint.py"),
                        "--seed", "7", "--out", weights], check=True, stdout=subprocess.DEVNULL)
    config = os.path.join(REPO, "packages", "configs", "ernie_vil_base.yaml")
    overrides = [("vocab_file", os.path.join(shared, "ernie_base_3.0", "vocab.txt")), ("init_from_params", weights),
                 ("text_model_config", os.path.join(REPO, "packages", "ernie_base_3.0", "ernie_config.base.json")),
                 ("progress", False), ("device", "cpu")] + [tuple(o.split("=", 1)) for o in args.overrides]
    photos, index_dir = os.path.join(work, "photos"), os.path.join(work, "index")
    shutil.rmtree(photos, ignore_errors=True)
    shutil.rmtree(index_dir, ignore_errors=True)
    rng = np.random.default_rng(0)

    def image(path):
        base = rng.integers(0, 255, (30, 40, 3), np.uint8)
        cv2.imwrite(path, cv2.resize(base, (640, 480), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])
    os.makedirs(photos)
    for i in range(args.images):
        image(os.path.join(photos, f"{i:05d}.jpg"))
    from ernievil2.search.sync import sync_index

    def timed_sync(label, **kw):
        t = time.perf_counter()
        summary = sync_index(config, overrides, index_dir, log=lambda _: None, **kw)
        seconds = time.perf_counter() - t
        touched = summary.added + summary.changed
        print(f"{label}: {' / '.join(summary.lines()[:1])}; {seconds:.1f} s in all "
              f"({(summary.added + summary.changed + summary.unchanged) / seconds:.1f} images/s scanned, "
              f"{summary.embedded / summary.embed_seconds if summary.embedded else 0:.2f} images/s embedded"
              f"{f', {touched / seconds:.2f} new-or-changed images/s end to end' if touched else ''})", flush=True)
    timed_sync("fresh", source=photos)
    n = args.images
    for i in range(n, n + n // 10):
        image(os.path.join(photos, f"{i:05d}.jpg"))
    for i in range(n // 20):
        image(os.path.join(photos, f"{i:05d}.jpg"))
        os.utime(os.path.join(photos, f"{i:05d}.jpg"), ns=(time.time_ns() + 10 ** 10,) * 2)
    for i in range(n // 20, n // 10):
        os.remove(os.path.join(photos, f"{i:05d}.jpg"))
    timed_sync("changed")
    timed_sync("unchanged")

    from ernievil2.api.model import model_from_config
    from ernievil2.infer.options import load_query_config
    from ernievil2.search.index import SearchIndex
    from ernievil2.search.query import search, search_batch
    model = model_from_config(load_query_config(config, overrides))
    index = SearchIndex(index_dir)
    texts = [f"第{i}张图片里有一辆红色的汽车和{i % 7}个行人" for i in range(args.batch)]
    search(model, index, text="预热", k=10)  # warm-up
    t = time.perf_counter()
    for text in texts:
        search(model, index, text=text, k=10)
    single = time.perf_counter() - t
    t = time.perf_counter()
    search_batch(model, index, texts, k=10)
    batch = time.perf_counter() - t
    print(f"{args.batch} text queries, k=10, index of {index.count}: one call each {1000 * single / args.batch:.1f} "
          f"ms/query, one batch {1000 * batch / args.batch:.1f} ms/query ({single / batch:.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--kinds", default="flat,hnsw,ivf_pq", type=lambda s: s.split(","))
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--data", default="clustered", choices=("clustered", "uniform"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/bench_search")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "INDEX_DIR"))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("-o", action="append", default=[], dest="overrides")
    parser.add_argument("--filtered", action="store_true", help="filtered query latency (synthetic vectors)")
    parser.add_argument("--living", action="store_true", help="sync speed and batch vs single (Base model)")
    parser.add_argument("--images", type=int, default=60, help="--living: images in the generated folder")
    parser.add_argument("--batch", type=int, default=32, help="--living: text queries in the batch")
    args = parser.parse_args()
    if args.filtered:
        bench_filtered(args)
    elif args.living:
        bench_living(args)
    elif args.serve:
        bench_serve(args, args.overrides)
    else:
        bench_kinds(args)


if __name__ == "__main__":
    main()
