"""`python eval_retri.py EMBEDDINGS [--json] [--ks 1,5,10] [--pairs]` (also `python -m ernievil2 eval`).
Imports only numpy: the evaluator starts fast and needs no Paddle."""
import argparse
import os
import sys

from ..errors import InputError
from ..eval.embedding_files import load_embeddings
from ..eval.metrics import DEFAULT_KS, check_ks, format_json, format_table, retrieval_metrics
from ..eval.sidecar import matching_sidecar
from .common import guarded


def _parse_ks(text):
    try:
        return check_ks(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def main(argv=None, prog="eval_retri.py"):
    parser = argparse.ArgumentParser(
        prog=prog, description="Recall@K and MRR for text<->image retrieval from an embedding file (the official "
                               "3-column text file or our .npz sidecar).")
    parser.add_argument("embeddings", help="text_emb \\t image_emb \\t image_id rows, or a .npz sidecar")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--ks", type=_parse_ks, default=DEFAULT_KS, metavar="K,K,...",
                        help="recall cut-offs (default 1,5,10)")
    parser.add_argument("--pairs", action="store_true",
                        help="treat every row as its own pair, like the official evaluator (automatic when "
                             "every image id is the official constant 1)")
    parser.add_argument("--block-size", type=int, default=None, metavar="ROWS",
                        help="query rows per score block (default: about 2**24 scores, 64 MB)")
    parser.add_argument("--folds", type=int, default=1, metavar="N",
                        help="average over N equal parts of the gallery, each ranked on its own (COCO's 1K "
                             "protocol: 5 folds of 1000 images); N must divide the number of images")
    parser.add_argument("--no-sidecar", action="store_true",
                        help="always parse a text file, even when run_infer.sh's verified .npz copy is beside it")
    args = parser.parse_args(argv)
    if args.block_size is not None and args.block_size < 1:
        parser.error("--block-size must be positive")
    if args.folds < 1:
        parser.error("--folds must be positive")

    def run():
        source = args.embeddings
        side = None if args.no_sidecar or not os.path.isfile(source) else matching_sidecar(source)
        if side:
            print(f"{prog}: reading {side}, the binary copy run_infer.sh wrote of {source} (size and CRC-32 "
                  f"match; --no-sidecar parses the text instead)", file=sys.stderr)
            source = side
        text, image, ids = load_embeddings(source)
        try:
            metrics = retrieval_metrics(text, image, ids, ks=args.ks, pairs=args.pairs, block_size=args.block_size,
                                        folds=args.folds)
        except ValueError as e:  # --folds that does not divide this file's images
            raise InputError(str(e), where=source) from None
        print(format_json(metrics) if args.json else format_table(metrics))

    return guarded(run, prog=prog)
