"""`python -m ernievil2 index build EMB.npz INDEX_DIR` (a search index, faiss or Milvus, over embeddings),
`index sync CONFIG INDEX_DIR` (bring it up to date with its image folder or TSV) and `index duplicates INDEX_DIR`
(groups of near-duplicate images)."""
import argparse
import sys

from .common import guarded, parse_with_overrides


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sync"]:
        return sync_main(argv[1:])
    if argv[:1] == ["duplicates"]:
        return duplicates_main(argv[1:])
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


def sync_main(argv=None):
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


def duplicates_main(argv=None):
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
