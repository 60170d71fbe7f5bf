"""ERNIE 3.0 tokenizer with the semantics of the official ERNIE-ViL 2.0 release (BERT's basic tokenisation +
WordPiece), and the vocabulary reader."""
import functools
import os
import unicodedata

import numpy as np

from ..errors import ConfigError, VocabError

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
MAX_CHARS_PER_WORD = 100
# A bounded memo: plenty for a caption corpus, small enough (tens of MB) for every data-loader worker.
WORD_CACHE_LIMIT = 300_000
# Whole texts repeat too (a tag prompt with the same tags, captions shared by rows of one image): their ids are kept
# in an LRU of this many texts (a few MB).
TEXT_CACHE_SIZE = 16_384

# CJK ideograph blocks that get a space on each side (BERT's definition; Hangul/kana are not included).
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_cjk_ideograph(codepoint):
    return any(low <= codepoint <= high for low, high in _CJK_RANGES)


def is_whitespace_char(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control_char(char):
    # Tab/newline/CR are category Cc but count as whitespace, not as removable control characters.
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def is_punctuation_char(char):
    codepoint = ord(char)
    # All non-alphanumeric printable ASCII counts, even ``$ ^ ` + < = > |`` which Unicode files under S*.
    if 33 <= codepoint <= 47 or 58 <= codepoint <= 64 or 91 <= codepoint <= 96 or 123 <= codepoint <= 126:
        return True
    return unicodedata.category(char).startswith("P")


class _CleanupTable(dict):
    """``str.translate`` table for steps 1-2, computed per character the first time it is seen.

    Precomputing all 1.1M code points would cost about a second at import in every worker; filling on
    demand keeps the C-level dictionary hit for every character after its first occurrence.
    """

    def __missing__(self, codepoint):
        char = chr(codepoint)
        if codepoint == 0 or codepoint == 0xFFFD or is_control_char(char):
            replacement = None
        elif is_whitespace_char(char):
            replacement = " "
        elif is_cjk_ideograph(codepoint):
            replacement = f" {char} "
        else:
            replacement = char
        self[codepoint] = replacement
        return replacement


class _PunctuationFlags(dict):
    def __missing__(self, char):
        flag = is_punctuation_char(char)
        self[char] = flag
        return flag


def read_vocab(path, duplicate_tokens="last"):
    """Read ``token<TAB>id`` lines (the official format) or one token per line (id = 0-based line number).

    The format is decided by the first line: a tab followed by an integer means the id format.
    Returns ``(token_to_id, id_to_token, duplicates)`` where ``duplicates`` maps each token that occurs
    more than once to all its ids. With ``duplicate_tokens="last"`` the last occurrence wins, which is
    what building a dict from the file does in both the official reader and PaddleNLP; the official
    ERNIE 3.0 vocabulary needs this because it lists ``$`` twice (ids 12084 and 18005).
    ``duplicate_tokens="error"`` refuses such a file instead.
    """
    if duplicate_tokens not in ("last", "error"):
        raise ConfigError(f"duplicate_tokens must be 'last' or 'error', not {duplicate_tokens!r}")
    lines = _vocab_lines(path)
    _, tab, first_id = lines[0].rpartition("\t")
    with_ids = bool(tab) and first_id.isdigit()
    token_to_id, id_to_line, occurrences = {}, {}, {}
    for line_number, text in enumerate(lines, start=1):
        token, token_id = _vocab_entry(path, line_number, text, with_ids)
        if token_id in id_to_line:
            raise VocabError(f"{path}:{line_number}: id {token_id} already used on line {id_to_line[token_id]}")
        id_to_line[token_id] = line_number
        occurrences.setdefault(token, []).append((line_number, token_id))
        token_to_id[token] = token_id
    duplicates = {token: [token_id for _, token_id in seen] for token, seen in occurrences.items() if len(seen) > 1}
    if duplicates and duplicate_tokens == "error":
        token, seen = next((t, s) for t, s in occurrences.items() if len(s) > 1)
        raise VocabError(f"{path}:{seen[1][0]}: token {token!r} already defined on line {seen[0][0]} "
                         f"({len(duplicates)} duplicated token(s) in total)")
    vocab_size = len(id_to_line)
    if max(id_to_line) != vocab_size - 1:
        missing = next(i for i in range(vocab_size) if i not in id_to_line)
        raise VocabError(f"{path}: ids must be 0..{vocab_size - 1} without gaps; id {missing} is missing "
                         f"(largest id is {max(id_to_line)})")
    id_to_token = [None] * vocab_size
    for token, seen in occurrences.items():
        for _, token_id in seen:
            id_to_token[token_id] = token
    return token_to_id, id_to_token, duplicates


def _vocab_lines(path):
    """The file's lines as text (a final newline ends the last line, it does not add an empty token)."""
    if not os.path.isfile(path):
        raise VocabError(f"vocab file not found: {path}")
    with open(path, "rb") as handle:
        raw_lines = handle.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    if not raw_lines:
        raise VocabError(f"{path}: vocab file is empty")
    lines = []
    for line_number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VocabError(f"{path}:{line_number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        lines.append(text[:-1] if text.endswith("\r") else text)
    return lines


def _vocab_entry(path, line_number, text, with_ids):
    """(token, id) of one line: `token<TAB>id`, or a bare token whose id is its 0-based line number."""
    if with_ids:
        token, tab, id_text = text.rpartition("\t")
        if not tab or not token or not id_text.isdigit():
            raise VocabError(f"{path}:{line_number}: expected 'token<TAB>id' like line 1, got {text!r}")
        return token, int(id_text)
    if not text:
        raise VocabError(f"{path}:{line_number}: empty line (one token per line expected)")
    if "\t" in text:
        raise VocabError(f"{path}:{line_number}: contains a tab, but line 1 is not in 'token<TAB>id' format, "
                         f"got {text!r}")
    return text, line_number - 1


class BasicTokenizer:
    """Steps 1-3 (cleanup, CJK spacing, lower-casing with accent stripping, punctuation split), without
    WordPiece; ErnieTokenizer and the vocabulary builder share it, so they always split text alike."""

    def __init__(self, do_lower_case=True):
        self.do_lower_case = do_lower_case
        self._cleanup = _CleanupTable()
        self._is_punct = _PunctuationFlags()

    def words(self, text):
        """Steps 1-2 and the whitespace split."""
        return text.translate(self._cleanup).split()

    def split_word(self, word):
        """Step 3 for one word -> its basic tokens."""
        if self.do_lower_case:
            # Lower-case the whole word at once: str.lower is context dependent (Greek final sigma).
            word = "".join(char for char in unicodedata.normalize("NFD", word.lower())
                           if unicodedata.category(char) != "Mn")
        basic_tokens, current = [], []
        is_punct = self._is_punct
        for char in word:
            if is_punct[char]:
                if current:
                    basic_tokens.append("".join(current))
                    current = []
                basic_tokens.append(char)
            else:
                current.append(char)
        if current:
            basic_tokens.append("".join(current))
        # Re-splitting guards against whitespace produced by lower-casing/decomposition, as the reference does.
        return " ".join(basic_tokens).split()

    def tokenize(self, text):
        return [token for word in self.words(text) for token in self.split_word(word)]


class ErnieTokenizer:
    """Text -> token ids exactly as the official release tokenises.

    Pipeline (the classic BERT recipe, no NFKC, no symbol splitting):
      1. drop NUL, U+FFFD and control characters (category C*, except tab/newline/CR which are whitespace);
         map whitespace (space, \\t, \\n, \\r, category Zs) to a space;
      2. put spaces around CJK ideographs so each becomes its own word;
      3. split on whitespace; per word: lower-case, NFD, drop combining marks (Mn), then split off every
         punctuation character (ASCII non-alphanumerics 33-47, 58-64, 91-96, 123-126, and category P*);
      4. greedy longest-match-first WordPiece, continuation pieces prefixed with ``##``; a word longer than
         100 characters, or one that cannot be covered by vocabulary pieces, becomes ``[UNK]``.

    Speed: steps 1-2 run as one ``str.translate`` with a per-character table filled on first sight, and the
    result of steps 3-4 is memoised per raw word, so steady-state cost is a split plus dictionary hits; the ids of
    a whole text are kept in an LRU (TEXT_CACHE_SIZE texts), so a repeated text costs one lookup.
    """

    def __init__(self, token_to_id, id_to_token, do_lower_case=True, source="<in-memory vocab>"):
        missing = [token for token in SPECIAL_TOKENS if token not in token_to_id]
        if missing:
            raise VocabError(f"{source}: special token(s) {', '.join(missing)} not found in the vocabulary")
        self.vocab = token_to_id
        self.id_to_token = list(id_to_token)
        self.do_lower_case = do_lower_case
        self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = (
            token_to_id[token] for token in SPECIAL_TOKENS)
        self.vocab_size = len(self.id_to_token)
        # No vocabulary piece is longer than this, so longer substrings need not be looked up.
        self._longest_piece = max(len(token) for token in token_to_id)
        self.basic = BasicTokenizer(do_lower_case)
        self._word_cache = {}
        self._text_ids = functools.lru_cache(maxsize=TEXT_CACHE_SIZE)(self._text_ids_uncached)
        self.duplicate_tokens = {}

    def __getstate__(self):  # the caches are rebuilt, not shipped to data-loader workers (and an lru_cache can't be)
        state = dict(self.__dict__)
        del state["_text_ids"]
        state["_word_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._text_ids = functools.lru_cache(maxsize=TEXT_CACHE_SIZE)(self._text_ids_uncached)

    @classmethod
    def from_file(cls, path, do_lower_case=True, duplicate_tokens="last"):
        token_to_id, id_to_token, duplicates = read_vocab(path, duplicate_tokens=duplicate_tokens)
        tokenizer = cls(token_to_id, id_to_token, do_lower_case=do_lower_case, source=path)
        tokenizer.duplicate_tokens = duplicates
        return tokenizer

    # ---- tokenisation -------------------------------------------------------------------------------
    def _split_word(self, word):
        """Steps 3-4 for one whitespace-separated word -> (tokens, ids)."""
        tokens = []
        for basic_token in self.basic.split_word(word):
            tokens.extend(self._wordpiece(basic_token))
        vocab = self.vocab
        return tuple(tokens), tuple(vocab[token] for token in tokens)

    def _wordpiece(self, word):
        length = len(word)
        if length > MAX_CHARS_PER_WORD:
            return ["[UNK]"]
        vocab = self.vocab
        pieces = []
        start = 0
        while start < length:
            prefix = "##" if start else ""
            end = min(length, start + self._longest_piece)
            while end > start:
                candidate = prefix + word[start:end]
                if candidate in vocab:
                    break
                end -= 1
            else:
                # One uncoverable position turns the whole word into a single [UNK].
                return ["[UNK]"]
            pieces.append(candidate)
            start = end
        return pieces

    def _lookup_words(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "ignore")
        elif not isinstance(text, str):
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        cache = self._word_cache
        results = []
        for word in self.basic.words(text):
            hit = cache.get(word)
            if hit is None:
                if len(cache) >= WORD_CACHE_LIMIT:
                    cache.clear()
                hit = cache[word] = self._split_word(word)
            results.append(hit)
        return results

    def tokenize(self, text):
        return [token for tokens, _ in self._lookup_words(text) for token in tokens]

    def text_to_ids(self, text):
        """Word-piece ids of ``text`` without special tokens (same as convert_tokens_to_ids(tokenize(text)))."""
        if not isinstance(text, (str, bytes)):  # checked before the LRU, which would only say "unhashable"
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        return list(self._text_ids(text))

    def _text_ids_uncached(self, text):
        return tuple(token_id for _, ids in self._lookup_words(text) for token_id in ids)

    def convert_tokens_to_ids(self, tokens):
        vocab, unk_id = self.vocab, self.unk_id
        return [vocab.get(token, unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids):
        return [self.id_to_token[int(token_id)] for token_id in ids]

    # ---- model inputs -------------------------------------------------------------------------------
    def encode(self, text, max_len=48):
        """``[CLS] + ids[:max_len - 2] + [SEP]``, unpadded (the official reader's layout)."""
        if max_len < 2:
            raise ConfigError(f"max_len must be at least 2 to hold [CLS] and [SEP], got {max_len}")
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        return [self.cls_id, *self._text_ids(text)[:max_len - 2], self.sep_id]

    def batch_encode(self, texts, max_len=48, pad_to=None):
        """int64 array [B, L]; L is the longest encoded text (or exactly ``pad_to``), filled with pad_id."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("batch_encode expects a sequence of texts, not a single text")
        encoded = [self.encode(text, max_len=max_len) for text in texts]
        longest = max((len(ids) for ids in encoded), default=0)
        if pad_to is None:
            width = longest
        else:
            if pad_to < longest:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest encoded text ({longest} ids); "
                                 f"use max_len <= pad_to")
            width = pad_to
        batch = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        for row, ids in enumerate(encoded):
            batch[row, :len(ids)] = ids
        return batch

    def __len__(self):
        return self.vocab_size
