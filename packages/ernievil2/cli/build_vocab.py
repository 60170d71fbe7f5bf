"""`python -m ernievil2 build-vocab FILE.tsv ... --out VOCAB`: a token<TAB>id vocabulary from TSV text and tag
columns."""
import argparse

from .common import guarded


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 build-vocab",
                                     description="Build a token<TAB>id vocabulary from TSV text and tag columns.")
    parser.add_argument("inputs", nargs="+", metavar="FILE.tsv")
    parser.add_argument("--out", required=True, help="vocabulary file to write")
    parser.add_argument("--min-count", type=int, default=1, help="drop tokens seen fewer times (default 1)")
    parser.add_argument("--max-size", type=int, default=None, help="at most this many entries, specials included")
    parser.add_argument("--no-lower-case", action="store_true", help="keep case (only for a cased tokenizer)")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)

    def run():
        from ..data.tokenizer import ErnieTokenizer
        from ..data.vocab import check_coverage, count_tokens, read_tsv_texts, vocab_from_counts, write_vocab
        texts, policy = read_tsv_texts(args.inputs, args.on_bad_row)
        counts = count_tokens(texts, do_lower_case=not args.no_lower_case)
        tokens = vocab_from_counts(counts, args.min_count, args.max_size)
        write_vocab(tokens, args.out)
        tokenizer = ErnieTokenizer.from_file(args.out, do_lower_case=not args.no_lower_case)
        unknown = len(check_coverage(tokenizer, texts))
        kept = set(tokens)
        dropped = sum(1 for token in counts if token not in kept)
        print(f"wrote {len(tokens)} tokens to {args.out} from {len(texts)} texts ({len(counts)} distinct basic "
              f"tokens, {dropped} dropped by --min-count/--max-size; {unknown} texts contain [UNK]"
              f"{f'; skipped {len(policy.skipped)} bad rows' if policy.skipped else ''})")

    return guarded(run, bad_row_hint="(use --on-bad-row skip to skip such rows); no vocabulary written",
                   bad_row_exit=2)
