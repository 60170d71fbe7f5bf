"""Build a ``token<TAB>id`` vocabulary from texts, with the tokenizer's own basic tokenisation.

Layout: [PAD] 0, [CLS] 1, [SEP] 2, [MASK] 3 (the official ids), then whole basic tokens by descending
frequency (ties in code-point order, so the file is deterministic), then [UNK] last.  Every basic token is a
whole vocabulary entry, so WordPiece never needs ``##`` pieces for text the vocabulary was built from; with
``min_count``/``max_size`` the dropped rare words become [UNK].

CLI: ``python -m ernievil2 build-vocab --out vocab.txt FILE.tsv [...] [--min-count N] [--max-size N]``
(reads the text and object-tag columns).
"""
import collections

from ..errors import ConfigError, InputError
from ..fileio import write_text_atomic
from .tokenizer import BasicTokenizer
from .tsv import BadRow, BadRowPolicy, read_rows

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
        raise ConfigError(f"min_count must be at least 1, got {min_count}")
    reserved = len(LEADING_SPECIALS) + 1
    if max_size is not None and max_size < reserved:
        raise ConfigError(f"max_size must be at least {reserved} (the special tokens), got {max_size}")
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
            raise InputError(f"{path}: cannot write vocabulary token {token!r} (empty or contains whitespace)")
    return write_text_atomic(path, "".join(f"{token}\t{token_id}\n" for token_id, token in enumerate(tokens)))


def check_coverage(tokenizer, texts):
    """Texts whose tokenisation contains [UNK], in order (empty list: the vocabulary covers them all)."""
    unk = tokenizer.unk_id
    return [text for text in texts if unk in tokenizer.text_to_ids(text)]


def read_tsv_texts(paths, on_bad_row="error"):
    """-> (texts, policy): the caption and the tag column of every good row; policy.skipped lists bad rows."""
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
