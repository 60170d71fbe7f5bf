"""`python -m ernievil2 search CONFIG INDEX_DIR --text TEXT | --image FILE`: search an index."""
import argparse
import json

from ..errors import ConfigError
from .common import format_hits, guarded, parse_with_overrides


def main(argv=None):
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
            for line in format_hits(results):
                print(line)

    return guarded(run)
