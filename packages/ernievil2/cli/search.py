"""`python -m ernievil2 index build EMB.npz INDEX_DIR`, `search CONFIG INDEX_DIR --text|--image` and
`serve CONFIG INDEX_DIR` (the HTTP service and its web page)."""
import argparse
import json
import sys

from ..errors import ConfigError
from .common import guarded, parse_with_overrides


def index_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 index",
                                     description="Build a search index over embeddings (python -m ernievil2 embed "
                                                 "output, or run_infer.sh's .npz sidecar).")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build INDEX_DIR from EMB.npz")
    build.add_argument("embeddings", metavar="EMB.npz")
    build.add_argument("index_dir", metavar="INDEX_DIR")
    build.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf_pq"),
                       help="flat: exact inner product (default); hnsw, ivf_pq: approximate, recall measured")
    build.add_argument("--metadata", help="per-id metadata: id<TAB>text lines, or JSONL objects with an \"id\"")
    build.add_argument("--gallery", help="the folder or TSV the images came from, for thumbnails (default: the "
                                         "embed output's own images source)")
    build.add_argument("--queries", help="an embed output of text queries, also used to measure recall")
    build.add_argument("--min-recall", type=float, help="fail when recall@10 is below this (approximate kinds)")
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="search parameters are tuned up to this recall@10 (default 0.95)")
    build.add_argument("--backend", default="faiss", choices=("faiss", "milvus"))
    build.add_argument("--uri", help="Milvus: a local file (Milvus Lite) or http://host:19530")
    args = parser.parse_args(argv)

    def run():
        from ..search.index import build_index
        manifest = build_index(args.embeddings, args.index_dir, kind=args.kind, metadata=args.metadata,
                               queries=args.queries, min_recall=args.min_recall, target_recall=args.target_recall,
                               backend=args.backend, uri=args.uri, gallery=args.gallery,
                               log=lambda line: print(line, file=sys.stderr))
        recall = manifest.get("recall_at_10")
        print(f"built {manifest['kind']} index ({manifest['backend']}) of {manifest['count']} vectors, dimension "
              f"{manifest['dim']}, in {manifest['build_seconds']} s: {args.index_dir}"
              + (f"; recall@10 {', '.join(f'{k} {v}' for k, v in recall.items())} at "
                 f"{', '.join(f'{k} {v}' for k, v in manifest['search_params'].items())}" if recall else ""))

    return guarded(run)


def search_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 search",
                                     description="Search an index with a text or an image (embedded with CONFIG's "
                                                 "model).  Results are best first; equal scores by ascending id.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", help="an image file")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {id, score, metadata}")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..api.model import model_from_config
        from ..infer.options import load_query_config
        from ..search.index import SearchIndex
        from ..search.query import search
        index = SearchIndex(args.index_dir)  # a missing index fails before the model loads
        if not 1 <= args.k <= index.count:
            raise ConfigError(f"-k must be between 1 and the index size {index.count}, got {args.k}")
        model = model_from_config(load_query_config(args.config, overrides))
        results = search(model, index, text=args.text, image=args.image, k=args.k)
        if args.json:
            print(json.dumps(results, ensure_ascii=False, indent=2))
        else:
            for rank, hit in enumerate(results, 1):
                meta = "" if hit["metadata"] is None else f"  {hit['metadata']}"
                print(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}{meta}")

    return guarded(run)


def serve_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 serve",
                                     description="Serve search over an index: GET /search?text=..., POST /search "
                                                 "(image upload), GET /healthz, and a web page at /.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image accepted (default 10)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header is NAME (repeatable; '*' for any). The "
                             "bound address and localhost always are")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding and embedding queries (default 2)")
    parser.add_argument("--queue", type=int, default=32,
                        help="queries that may wait for a worker; more are answered 503 (default 32)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a query is answered 504")
    parser.add_argument("--reload-every", type=float, default=2.0, metavar="SECONDS",
                        help="check INDEX_DIR for a rebuilt or synced index this often and swap it in without a "
                             "restart (0: only on POST /admin/reload; default 2)")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        import uvicorn

        from ..serve.app import load_app
        from ..serve.service import ServeSettings
        settings = ServeSettings(host=args.host, allow_hosts=tuple(args.allow_host),
                                 max_upload_bytes=int(args.max_upload_mb * (1 << 20)), workers=args.workers,
                                 queue_size=args.queue, timeout=args.timeout, reload_seconds=args.reload_every)
        app = load_app(args.config, overrides, args.index_dir, settings)
        print(f"serving {args.index_dir} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    return guarded(run)
