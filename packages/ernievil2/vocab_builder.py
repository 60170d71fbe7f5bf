"""Build a ``token<TAB>id`` vocabulary from texts, with the tokenizer's own basic tokenisation.

Layout: [PAD] 0, [CLS] 1, [SEP] 2, [MASK] 3 (the official ids), then whole basic tokens by descending
frequency (ties in code-point order, so the file is deterministic), then [UNK] last.  Every basic token is a
whole vocabulary entry, so WordPiece never needs ``##`` pieces for text the vocabulary was built from; with
``min_count``/``max_size`` the dropped rare words become [UNK].

CLI: ``python -m ernievil2 build-vocab --out vocab.txt FILE.tsv [...] [--min-count N] [--max-size N]``
(reads the text and object-tag columns).
"""
import argparse
import collections
import sys

from .fileio import atomic_write
from .tokenizer import BasicTokenizer, ErnieTokenizer

LEADING_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
UNK = "[UNK]"


def count_tokens(texts, counter=None, do_lower_case=True):
    counter = collections.Counter() if counter is None else counter
    basic = BasicTokenizer(do_lower_case)
    for text in texts:
        counter.update(basic.tokenize(text))
    return counter


def vocab_from_counts(counts, min_count=1, max_size=None):
    """Ordered token list (index = id) from a token -> count mapping."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    reserved = len(LEADING_SPECIALS) + 1
    if max_size is not None and max_size < reserved:
        raise ValueError(f"max_size must be at least {reserved} (the special tokens), got {max_size}")
    specials = set(LEADING_SPECIALS) | {UNK}
    kept = sorted(((token, n) for token, n in counts.items() if n >= min_count and token not in specials),
                  key=lambda item: (-item[1], item[0]))
    if max_size is not None:
        kept = kept[:max_size - reserved]
    return [*LEADING_SPECIALS, *(token for token, _ in kept), UNK]


def build_vocab(texts, min_count=1, max_size=None, do_lower_case=True):
    return vocab_from_counts(count_tokens(texts, do_lower_case=do_lower_case), min_count, max_size)


def write_vocab(tokens, path):
    for token in tokens:
        # A token with whitespace could not be read back (and basic tokenisation never produces one).
        if not token or any(char.isspace() for char in token):
            raise ValueError(f"{path}: cannot write vocabulary token {token!r} (empty or contains whitespace)")

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{token}\t{token_id}\n" for token_id, token in enumerate(tokens))
    return atomic_write(path, write)


def check_coverage(tokenizer, texts):
    """Texts whose tokenisation contains [UNK], in order (empty list: the vocabulary covers them all)."""
    unk = tokenizer.unk_id
    return [text for text in texts if unk in tokenizer.text_to_ids(text)]


def read_tsv_texts(paths, on_bad_row="error"):
    """-> (texts, policy): the caption and the tag column of every good row; policy.skipped lists bad rows."""
    from .tsv import BadRow, BadRowPolicy, read_rows  # noqa: PLC0415

    policy = BadRowPolicy(on_bad_row)
    texts = []
    for path in paths:
        for row in read_rows(path):
            if isinstance(row, BadRow):
                policy(row)
                continue
            texts.append(row.text)
            if row.tags:
                texts.append(row.tags)
    return texts, policy


def main(argv=None):
    from .cli import _fail  # noqa: PLC0415
    from .tsv import BadRowError  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m ernievil2 build-vocab",
                                     description="Build a token<TAB>id vocabulary from TSV text and tag columns.")
    parser.add_argument("inputs", nargs="+", metavar="FILE.tsv")
    parser.add_argument("--out", required=True, help="vocabulary file to write")
    parser.add_argument("--min-count", type=int, default=1, help="drop tokens seen fewer times (default 1)")
    parser.add_argument("--max-size", type=int, default=None, help="at most this many entries, specials included")
    parser.add_argument("--no-lower-case", action="store_true", help="keep case (only for a cased tokenizer)")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)
    try:
        texts, policy = read_tsv_texts(args.inputs, args.on_bad_row)
        counts = count_tokens(texts, do_lower_case=not args.no_lower_case)
        tokens = vocab_from_counts(counts, args.min_count, args.max_size)
        write_vocab(tokens, args.out)
        tokenizer = ErnieTokenizer.from_file(args.out, do_lower_case=not args.no_lower_case)
        unknown = len(check_coverage(tokenizer, texts))
    except BadRowError as e:
        return _fail(f"{e} (use --on-bad-row skip to skip such rows); no vocabulary written")
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    kept = set(tokens)
    dropped = sum(1 for token in counts if token not in kept)
    print(f"wrote {len(tokens)} tokens to {args.out} from {len(texts)} texts ({len(counts)} distinct basic "
          f"tokens, {dropped} dropped by --min-count/--max-size; {unknown} texts contain [UNK]"
          f"{f'; skipped {len(policy.skipped)} bad rows' if policy.skipped else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
