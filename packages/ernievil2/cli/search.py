"""`python -m ernievil2 index build EMB.npz INDEX_DIR`, `search CONFIG INDEX_DIR --text|--image` and
`serve CONFIG INDEX_DIR` (the HTTP service and its web page)."""
import argparse
import json
import os
import sys

from ..errors import ConfigError
from .common import guarded, parse_with_overrides


def index_main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sync"]:
        return index_sync_main(argv[1:])
    if argv[:1] == ["duplicates"]:
        return index_duplicates_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m ernievil2 index",
                                     description="Build a search index over embeddings (python -m ernievil2 embed "
                                                 "output, or run_infer.sh's .npz sidecar).")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build INDEX_DIR from EMB.npz")
    sub.add_parser("sync", help="bring INDEX_DIR up to date with its image folder or TSV (see index sync -h)")
    sub.add_parser("duplicates", help="groups of near-duplicate images in INDEX_DIR (see index duplicates -h)")
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


def index_sync_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 index sync",
        description="Bring INDEX_DIR up to date with the image folder or image_id<TAB>base64 TSV it was built from: "
                    "embed new and changed images (with CONFIG's model), drop deleted ones.  An interrupted sync "
                    "leaves the previous index in place; the next one reuses what was embedded.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--source", help="the folder or TSV (required to create INDEX_DIR; else must be the one "
                                         "it was built from)")
    parser.add_argument("--metadata", help="user fields per id (JSONL objects with \"id\", or id<TAB>text "
                                           "lines); replaces the recorded ones")
    parser.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf_pq"), help="when creating")
    parser.add_argument("--backend", default="faiss", choices=("faiss", "milvus"), help="when creating")
    parser.add_argument("--uri", help="Milvus (when creating): a local file (Milvus Lite) or http://host:19530")
    parser.add_argument("--target-recall", type=float, default=0.95, help="approximate kinds, when creating")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..search.sync import sync_index
        summary = sync_index(args.config, overrides, args.index_dir, source=args.source, kind=args.kind,
                             backend=args.backend, uri=args.uri, metadata=args.metadata,
                             target_recall=args.target_recall, log=lambda line: print(line, file=sys.stderr))
        for line in summary.lines():
            print(line)

    return guarded(run, bad_row_hint="(set on_bad_row: skip to skip such images); the index is unchanged")


def index_duplicates_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 index duplicates",
        description="Groups of near-duplicate images: connected components of the pairs whose cosine similarity "
                    "(inner product of the L2-normalised embeddings) is >= THRESHOLD; exact (every pair compared).")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--threshold", type=float, required=True, help="cosine similarity in [-1, 1], e.g. 0.95")
    parser.add_argument("--format", choices=("json", "tsv"), default="json",
                        help="json: {threshold, groups: [{ids, pairs}]}; tsv: group<TAB>id lines")
    parser.add_argument("--output", help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)

    def run():
        from ..fileio import write_text_atomic
        from ..search.duplicates import duplicate_groups, format_groups
        from ..search.index import SearchIndex
        groups = duplicate_groups(SearchIndex(args.index_dir), args.threshold)
        text = format_groups(groups, args.threshold, args.format)
        if args.output:
            write_text_atomic(args.output, text)
            print(f"{len(groups)} group(s) of near-duplicates: {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)

    return guarded(run)


def search_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 search",
                                     description="Search an index with texts and images (embedded with CONFIG's "
                                                 "model).  Several --text/--image/--minus-* terms make one "
                                                 "composed query (a weight as TERM::W).  Results are best first; "
                                                 "equal scores by ascending id.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--text", action="append", default=[], help="a text (repeatable: composed)")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeatable: composed)")
    parser.add_argument("--minus-text", action="append", default=[], help="a text to move away from")
    parser.add_argument("--minus-image", action="append", default=[], help="an image to move away from")
    parser.add_argument("--queries", help="a batch: a text file (one query per line) or JSONL of {text | image | "
                                          "terms, k, where, id}; prints one JSON line of results per query")
    parser.add_argument("--where", action="append", default=[],
                        help="a metadata filter: FIELD=V, FIELD=V1|V2, FIELD>=N, FIELD<N ... (repeatable: all hold)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {id, score, metadata}")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..api.model import model_from_config
        from ..infer.options import load_query_config
        from ..search.filters import parse_where
        from ..search.index import SearchIndex
        from ..search.query import search, search_batch
        terms = _composed_terms(args)
        if bool(terms) == bool(args.queries):
            raise ConfigError("give --text/--image terms or --queries FILE (not both)")
        index = SearchIndex(args.index_dir)  # a missing index fails before the model loads
        if not 1 <= args.k <= index.count:
            raise ConfigError(f"-k must be between 1 and the index size {index.count}, got {args.k}")
        where = parse_where(args.where) or None
        if where:
            index.fields.check(where)  # an unknown field fails before the model loads
        queries = _read_queries(args.queries) if args.queries else None
        model = model_from_config(load_query_config(args.config, overrides))
        if queries is not None:
            for block in range(0, len(queries), BATCH_BLOCK):
                part = queries[block:block + BATCH_BLOCK]
                for query, results in zip(part, search_batch(model, index, part, k=args.k, where=where)):
                    print(json.dumps({"query": query, "results": results}, ensure_ascii=False))
            return
        if len(terms) == 1 and terms[0].get("weight", 1.0) == 1.0:
            results = search(model, index, text=terms[0].get("text"), image=terms[0].get("image"), k=args.k,
                             where=where)
        else:
            results = search(model, index, terms=terms, k=args.k, where=where)
        if args.json:
            print(json.dumps(results, ensure_ascii=False, indent=2))
        else:
            for rank, hit in enumerate(results, 1):
                meta = "" if hit["metadata"] is None else f"  {hit['metadata']}"
                print(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}{meta}")

    return guarded(run)


BATCH_BLOCK = 256  # queries per model call in `search --queries`


def _composed_terms(args):
    """[{"text"|"image": value, "weight": w}] of --text/--image/--minus-* (a value may end in ::WEIGHT)."""
    terms = []
    for key, sign, values in (("text", 1, args.text), ("image", 1, args.image), ("text", -1, args.minus_text),
                              ("image", -1, args.minus_image)):
        for value in values:
            weight = 1.0
            head, sep, tail = value.rpartition("::")
            if sep:
                try:
                    weight, value = float(tail), head
                except ValueError:
                    pass  # "::" belongs to the value
            terms.append({key: value, "weight": sign * weight})
    return terms


def _read_queries(path):
    """Queries of a --queries file: JSONL objects (.jsonl) or one text per non-blank line; errors name the
    line."""
    from ..data.tsv import text_lines
    from ..errors import InputError
    if not os.path.isfile(path):
        raise InputError(f"{path}: queries file not found")
    queries = []
    for line_no, text, problem in text_lines(path):
        if problem:
            raise InputError(f"{path}:{line_no}: {problem}")
        if not text.strip():
            continue
        if path.lower().endswith((".jsonl", ".json", ".ndjson")):
            try:
                query = json.loads(text)
            except ValueError as e:
                raise InputError(f"{path}:{line_no}: not valid JSON ({e})") from None
            if not isinstance(query, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object with text, image or terms")
            queries.append(query)
        else:
            queries.append(text)
    if not queries:
        raise InputError(f"{path}: no queries")
    return queries


def serve_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 serve",
                                     description="Serve search over an index: GET /search?text=..., POST /search "
                                                 "(image upload), GET /healthz, and a web page at /.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        import uvicorn

        from ..serve.app import load_app
        app = load_app(args.config, overrides, args.index_dir, int(args.max_upload_mb * (1 << 20)))
        print(f"serving {args.index_dir} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    return guarded(run)
