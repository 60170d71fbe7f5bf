"""`python -m ernievil2 index build EMB.npz INDEX_DIR`: build a search index (faiss or Milvus) over embeddings."""
import argparse
import sys

from .common import guarded


def main(argv=None):
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
