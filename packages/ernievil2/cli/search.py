"""`python -m ernievil2 search CONFIG INDEX_DIR`: search an index with texts and images (one query, a composed
query of several weighted terms, or a batch from a file), optionally filtered by metadata."""
import argparse
import json
import os

from ..errors import ConfigError
from .common import format_hits, guarded, parse_with_overrides


def main(argv=None):
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
            for line in format_hits(results):
                print(line)

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
