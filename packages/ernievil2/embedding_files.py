"""Embedding files for the evaluator: the official 3-column text format (fast exact parsing) and our .npz
sidecar.  Imports only numpy.

Inputs (`load_embeddings` detects the format from the file's first bytes, not its name)
  * text: one row per line, ``text_emb \\t image_emb \\t image_id``, each embedding space-separated floats (the
    file the official run_infer.py writes, with the constant ``1`` as id, and the one ours writes);
  * sidecar: an ``.npz`` (a zip, so it starts with ``PK``) holding ``text`` float32 [N, D], ``image`` float32
    [N, D] (per row: a repeated image repeats) and ``image_ids`` unicode [N]; `save_sidecar` writes one.
    run_infer.sh writes both, and its sidecar records the text file's size and CRC-32: `eval_retri.py out.txt`
    then reads `out.npz` instead of parsing (`matching_sidecar`; only while both still match).

Text parsing
  No per-value Python: the file is read in 4 MB chunks; numpy locates the newlines, tabs and spaces, and a
  vectorised decimal parser (SWAR digit arithmetic on 64-bit words, then one correctly rounded float64 division
  by a power of ten, then float32) yields the same bits as Python's float() followed by float32, which is what
  the official reader does.  Tokens off that fast path (nan, inf, more than 14 fraction digits, big exponents,
  ...) and irregular lines go through float() itself.  An image column identical to the previous line's (the
  captions of one image, one after another) is copied instead of parsed.  Files from 32 MB up are split into
  one byte range per CPU, read by forked processes into shared memory.
"""
import os
import zipfile
import zlib

import numpy as np

_READ_CHUNK = 1 << 22  # bytes of text read and parsed at a time
_SIDECAR_MAGIC = b"PK"
_PARALLEL_BYTES = 1 << 25  # text files from 32 MB up are parsed by one process per CPU


class EmbeddingFileError(ValueError):
    """An embedding file (or array) the evaluator cannot use; the message names the file and line."""


# ---------------------------------------------------------------------------------------------------------
# Vectorised decimal parsing
# ---------------------------------------------------------------------------------------------------------

_PAD = 32  # spare bytes before and after the data in the read buffer: fixed-width reads near its ends stay inside
_U = np.uint64
_P10 = np.array([float(10 ** k) for k in range(23)])  # 10**0..10**22: exactly representable in float64
_MAX_FRAC = 14  # fraction digits on the fast path: D*10**14 + fraction < 10**15 < 2**53, so the mantissa is exact
_BATCH = 1 << 16  # tokens per vectorised parse step: the temporaries stay in cache


def _window_masks():
    # For f = 0..16: masks keeping the last f bytes of a 16-byte little-endian window (lo = bytes 0-7, hi = 8-15).
    lo, hi = np.zeros(17, np.uint64), np.zeros(17, np.uint64)
    for f in range(17):
        keep = sum(0xFF << (8 * i) for i in range(16 - f, 16))
        lo[f], hi[f] = keep & 0xFFFFFFFFFFFFFFFF, keep >> 64
    return lo, hi


_MASK_LO, _MASK_HI = _window_masks()
_ASCII_ZEROS = _U(0x3030303030303030)
_HIGH_BITS = _U(0x8080808080808080)
_PLUS_118 = _U(0x7676767676767676)  # byte + 0x76 sets the high bit exactly when the byte is >= 10 (bytes < 0x80)


def _eight_digits(x):
    """x holds 8 digit values (0..9), the first digit in the lowest byte; returns the 8-digit integer.
    Each multiply adds a lane to 10/100/10000 times its lower neighbour; the shifts and masks keep the sums."""
    x = (x * _U(2561)) >> _U(8)
    x = ((x & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    return ((x & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)


def _parse_tokens(buf, starts, ends):
    """float32 values of the tokens buf[starts[i]:ends[i]], bit-identical to np.float32(float(token)).

    buf: uint8 array whose length is a multiple of 8 (read as aligned 64-bit words: numpy gathers unaligned
    words an order of magnitude slower), with at least _PAD spare bytes around the tokens.
    Fast path: [-]D.F...F[e(+|-)DD] with one integer digit and 1..14 fraction digits (what str(float32) writes
    for values below 10).  The mantissa D*10**f + fraction is an integer below 2**53 and 10**k (k <= 22) is
    exact, so mantissa / 10**k is the correctly rounded double, which is what float() returns.  The fraction is
    taken as the 16 bytes ending at its last digit (assembled from three aligned words), the bytes before it
    masked off, and converted 8 digits at a time (SWAR).  Every other token goes through float().
    Returns (values, index of the first token float() rejects or -1, that token); rejected tokens read as 0.
    """
    words = buf.view("<u8")
    neg = buf[starts] == 45  # '-'
    first = starts + neg
    digit = buf[first] ^ np.uint8(48)
    ok = (digit <= 9) & (buf[first + 1] == 46)  # "D."
    has_exp = buf[ends - 4] == 101  # 'e' four bytes before the end: e+DD / e-DD
    frac_end = ends - 4 * has_exp
    frac_len = frac_end - first - 2
    ok &= (frac_len >= 1) & (frac_len <= _MAX_FRAC)
    f = np.clip(frac_len, 0, _MAX_FRAC)
    at = frac_end - 16
    q = at >> 3
    shift = ((at & 7) << 3).astype(np.uint64)
    back = _U(63) - shift  # (w << 1) << (63 - s) == w << (64 - s), and 0 for s == 0
    w1 = words[q + 1]
    lo = (words[q] >> shift) | ((w1 << _U(1)) << back)
    hi = (w1 >> shift) | ((words[q + 2] << _U(1)) << back)
    lo ^= _ASCII_ZEROS  # XOR maps '0'..'9' to 0..9, with no borrows between bytes
    lo &= _MASK_LO[f]
    hi ^= _ASCII_ZEROS
    hi &= _MASK_HI[f]
    ok &= (((lo + _PLUS_118) | lo | (hi + _PLUS_118) | hi) & _HIGH_BITS) == 0  # every fraction byte a digit
    mantissa = (_eight_digits(lo) * _U(100000000) + _eight_digits(hi)).astype(np.float64)
    mantissa += digit * _P10[f]
    power = f
    exp_at = np.flatnonzero(has_exp)
    if len(exp_at):  # rare in embeddings (|x| < 1e-4): handled on the subset
        e_end = ends[exp_at]
        sign, d1, d2 = buf[e_end - 3], buf[e_end - 2].astype(np.int64) - 48, buf[e_end - 1].astype(np.int64) - 48
        p = f[exp_at] + np.where(sign == 45, 1, -1) * (d1 * 10 + d2)
        ok[exp_at] &= ((sign == 43) | (sign == 45)) & (d1 >= 0) & (d1 <= 9) & (d2 >= 0) & (d2 <= 9) & \
            (p >= 0) & (p <= 22)
        power = f.copy()
        power[exp_at] = np.clip(p, 0, 22)
    value = mantissa / _P10[power]
    value *= 1 - 2 * neg.view(np.int8)  # the sign; multiplying by -1 is exact (and far faster than where=)
    out = value.astype(np.float32)
    bad, bad_token = -1, b""
    for i in np.flatnonzero(~ok).tolist():
        token = buf[starts[i]:ends[i]].tobytes()
        try:
            out[i] = float(token)
        except ValueError:
            out[i] = 0.0
            if bad < 0:
                bad, bad_token = i, token
    return out, bad, bad_token


# ---------------------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------------------

def load_embeddings(path):
    """Read an embedding file (official 3-column text or our .npz sidecar; detected by content).

    Returns (text float32 [N, D], image float32 [N, D], image_ids unicode [N]).  Raises EmbeddingFileError
    naming the file and line (wrong column count, mismatched dimensions, unparsable values, NaN/inf, empty).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_SIDECAR_MAGIC))
    except OSError as e:
        raise EmbeddingFileError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic == _SIDECAR_MAGIC:
        return _load_sidecar(path)
    return _load_text(path)


TEXT_FILE_CHECK = "text_file_check"  # sidecar array: [byte size, CRC-32] of the text file it is a copy of


def sidecar_path_for(text_path):
    """Where run_infer.sh puts the binary copy of an embedding text file: `out.embeddings` -> `out.npz`."""
    return os.path.splitext(text_path)[0] + ".npz"


def text_file_check(path, chunk=1 << 24):
    """[byte size, CRC-32] of a file (CRC-32 runs at several GB/s, far faster than parsing the text)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            crc, size = zlib.crc32(block, crc), size + len(block)
    return np.array([size, crc], np.int64)


def matching_sidecar(text_path):
    """The sidecar beside `text_path` if it certifiably holds the same rows, else None.

    A sidecar qualifies only when it records the size and CRC-32 of the text file it was written with and both
    still match the file now (an edited, truncated or regenerated text file never reuses a stale copy).  The
    float32 values are identical either way: the text holds str() of each float32, which reads back exactly.
    """
    side = sidecar_path_for(text_path)
    if os.path.abspath(side) == os.path.abspath(text_path) or not os.path.isfile(side):
        return None
    try:
        with np.load(side, allow_pickle=False) as z:
            if TEXT_FILE_CHECK not in z.files:
                return None
            recorded = np.asarray(z[TEXT_FILE_CHECK])
        if recorded.shape != (2,) or int(recorded[0]) != os.path.getsize(text_path):
            return None
        return side if np.array_equal(text_file_check(text_path), recorded) else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None  # an unreadable sidecar is simply not used; the text file is parsed


def save_sidecar(path, text, image, image_ids, text_file=None):
    """Write the .npz sidecar atomically: a temporary file beside `path`, renamed onto it once complete.
    With `text_file`, record its size and CRC-32 so that eval_retri.py may read this copy in its place."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    ids = np.array([str(i) for i in image_ids], dtype=str)
    if text.ndim != 2 or image.shape != text.shape or ids.shape != (text.shape[0],):
        raise ValueError(f"sidecar needs text and image of one shape [N, D] and N image ids; got text "
                         f"{text.shape}, image {image.shape}, {ids.shape[0]} ids")
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            extra = {TEXT_FILE_CHECK: text_file_check(text_file)} if text_file else {}
            np.savez(f, text=text, image=image, image_ids=ids, **extra)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _load_sidecar(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"text", "image", "image_ids"} - set(z.files))
            if missing:
                raise EmbeddingFileError(f"{path}: sidecar lacks array(s) {', '.join(missing)} "
                                         f"(expected text, image, image_ids)")
            text, image, ids = z["text"], z["image"], z["image_ids"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, EmbeddingFileError):
            raise
        raise EmbeddingFileError(f"{path}: not a readable .npz sidecar: {e}") from None
    where = f"{path}:"
    if text.ndim != 2 or text.dtype.kind != "f":
        raise EmbeddingFileError(f"{where} text must be a float [N, D] array, got {text.dtype} {text.shape}")
    if image.ndim != 2 or image.dtype.kind != "f":
        raise EmbeddingFileError(f"{where} image must be a float [N, D] array, got {image.dtype} {image.shape}")
    if len(text) == 0:
        raise EmbeddingFileError(f"{where} empty sidecar: no embedding rows")
    if len(image) != len(text) or ids.shape != (len(text),):
        raise EmbeddingFileError(f"{where} row counts differ: text {len(text)}, image {len(image)}, "
                                 f"image_ids {ids.shape}")
    if image.shape[1] != text.shape[1]:
        raise EmbeddingFileError(f"{where} embeddings of different dimensions: text {text.shape[1]}, "
                                 f"image {image.shape[1]}")
    if text.shape[1] == 0:
        raise EmbeddingFileError(f"{where} embeddings have dimension 0")
    text, image = text.astype(np.float32, copy=False), image.astype(np.float32, copy=False)
    for name, arr in (("text", text), ("image", image)):
        bad = ~np.isfinite(arr).all(1)
        if bad.any():
            raise EmbeddingFileError(f"{where} row {int(np.argmax(bad)) + 1}: {name} embedding contains NaN or "
                                     f"infinity")
    if ids.dtype.kind != "U":
        ids = ids.astype(str)
    return text, image, ids


class _LineError(Exception):
    """A problem on one line; the reader of a byte range may not know the absolute line number yet."""

    def __init__(self, number, detail):
        super().__init__(number, detail)
        self.number, self.detail = number, detail


def _split_line(line, number):
    """The slow, careful reading of one line: (text tokens, image tokens, image id), or a _LineError."""
    if line.endswith(b"\r"):
        line = line[:-1]
    cols = line.split(b"\t")
    if len(cols) != 3:
        what = "empty line" if not line.strip() else f"{len(cols)} tab-separated column(s)"
        raise _LineError(number, f"{what}; expected 3 (text embedding, image embedding, image id)")
    return cols[0].split(), cols[1].split(), _decode_id(cols[2], number)


def _decode_id(raw, number):
    try:
        image_id = raw.strip().decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError(number, "image id is not UTF-8") from None
    if not image_id:
        raise _LineError(number, "empty image id (third column)")
    return image_id


def _line_dim(line):
    """The embedding dimension, from line 1 (which must have equal text and image dimensions)."""
    text, image, _ = _split_line(line, 1)
    if not text:
        raise _LineError(1, "empty text embedding")
    if len(image) != len(text):
        raise _LineError(1, f"embeddings of different dimensions: text has {len(text)} values, image {len(image)}")
    return len(text)


class _TextReader:
    """Reads the lines in bytes [start, stop) of a 3-column text file, chunk by chunk, into [rows, dim] arrays.

    Per chunk, numpy finds the newlines, tabs and spaces; a line with exactly two tabs and dim - 1 spaces in
    each embedding column is on the fast path: its token boundaries come straight from the space positions and
    its numbers are parsed in place, in the read buffer.  Any other line (an error, or merely irregular
    spacing) is read by the slow path, which also words the error.  Line numbers count from the range start.
    """

    def __init__(self, path, dim, out=None):
        self.path = path
        self.dim = dim
        self.lines = 0  # lines consumed so far
        self.fixed = out is not None  # caller-provided arrays (shared memory) cannot be replaced
        self.text, self.image = out if out is not None else (None, None)
        self.ids = []
        self.size = 0

    def read(self, start=0, stop=None, chunk=None):
        chunk = chunk or _READ_CHUNK
        chunk = max(64, chunk + (-chunk) % 8)  # multiples of 8 keep the buffer viewable as 64-bit words
        buf = np.zeros(_PAD + chunk + _PAD, np.uint8)
        have = 0  # bytes of an unfinished line kept at the front of the buffer
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            stop = size if stop is None else stop
            self.size = stop - start
            f.seek(start)
            left = stop - start
            while True:
                begin = _PAD + have
                with memoryview(buf) as view:
                    got = f.readinto(view[begin:begin + min(left, len(buf) - _PAD - begin)]) if left else 0
                left -= got
                end = begin + got
                if not got:
                    if have:  # the last line has no newline: give it one
                        buf[end] = 10
                        self._chunk(buf, _PAD, end + 1)
                    return self
                tail = max(begin, end - 65536)  # the last newline is normally near the end
                nl = np.flatnonzero(buf[tail:end] == 10)
                if not len(nl) and tail > begin:
                    tail = begin
                    nl = np.flatnonzero(buf[begin:end] == 10)
                if not len(nl):  # no complete line yet
                    have = end - _PAD
                    if end == len(buf) - _PAD:  # a line longer than the buffer: double it
                        buf = np.concatenate([buf[:end], np.zeros(len(buf) - _PAD, np.uint8)])
                    continue
                cut = tail + int(nl[-1]) + 1
                self._chunk(buf, _PAD, cut)
                have = end - cut
                buf[_PAD:_PAD + have] = buf[cut:end]

    def result(self):
        n = self.lines
        return self.text[:n], self.image[:n], self.ids

    def _rows(self, n, line_bytes):
        """Views of the next n output rows, growing the arrays when needed."""
        need = self.lines + n
        if self.text is None or need > len(self.text):
            if self.fixed:
                raise AssertionError("more rows than the bound allowed for")  # see _rows_bound
            # First guess from the byte count; untouched rows of np.empty cost no resident memory.
            guess = int(self.size / max(line_bytes, 1) * 1.5) + 16
            capacity = max(need, guess if self.text is None else int(len(self.text) * 1.5))
            grown = [np.empty((capacity, self.dim), np.float32) for _ in range(2)]
            if self.text is not None:
                grown[0][:self.lines] = self.text[:self.lines]
                grown[1][:self.lines] = self.image[:self.lines]
            self.text, self.image = grown
        return self.text[self.lines:need], self.image[self.lines:need]

    def _slow(self, buf, start, stop, number):
        text, image, image_id = _split_line(buf[start:stop].tobytes(), number)
        values = []
        for what, tokens in (("text", text), ("image", image)):
            if len(tokens) != self.dim:
                raise _LineError(number, f"{what} embedding has {len(tokens)} values, expected {self.dim} (the "
                                         f"dimension of line 1)")
            row = np.empty(self.dim, np.float32)
            for j, token in enumerate(tokens):
                try:
                    row[j] = float(token)
                except ValueError:
                    raise _LineError(number, self._not_a_number(what, j, token)) from None
            values.append(row)
        return values[0], values[1], image_id

    @staticmethod
    def _not_a_number(what, j, token):
        return f"{what} embedding value {j + 1} is not a number: {token.decode('utf-8', 'replace')!r}"

    def _chunk(self, buf, lo, hi):
        """Parse the complete lines in buf[lo:hi] (hi just after a newline)."""
        first_number = self.lines + 1
        sep = np.flatnonzero(buf[lo:hi] <= 32)  # every space, tab and newline (and other control bytes)
        sep += lo
        kind = buf[sep]
        newline, tab, space = sep[kind == 10], sep[kind == 9], sep[kind == 32]
        del sep, kind
        n = len(newline)
        line_start = np.empty(n, np.int64)
        line_start[0] = lo
        line_start[1:] = newline[:-1] + 1
        dim = self.dim
        text, image = self._rows(n, newline[0] + 1 - lo)
        ids = [None] * n
        errors = []  # (line number, rank, detail): the earliest line's is raised, format before NaN
        tabs_before = np.searchsorted(tab, newline)  # tabs before each line's end
        fast = np.diff(tabs_before, prepend=0) == 2
        if fast.any():
            tab1 = tab[np.maximum(tabs_before - 2, 0)]
            tab2 = tab[np.maximum(tabs_before - 1, 0)]
            in_line = np.searchsorted(space, line_start)
            in_text = np.searchsorted(space, tab1)
            in_image = np.searchsorted(space, tab2)
            fast &= (in_text - in_line == dim - 1) & (in_image - in_text == dim - 1)
        rows = np.flatnonzero(fast)
        if len(rows):
            if len(rows) < n or len(space) != n * 2 * (dim - 1):  # keep only spaces inside fast embeddings
                owner = np.searchsorted(newline, space)
                space = space[fast[owner] & (space < tab2[owner])]
            inner = space.reshape(len(rows), 2, dim - 1)
            del space
            # A line whose image column repeats the previous line's bytes (the captions of one image, one after
            # another) copies that row instead of parsing it again: identical text, identical values.
            repeat = np.zeros(n, np.bool_)
            image_start, image_len = (tab1 + 1).tolist(), (tab2 - tab1 - 1).tolist()
            with memoryview(buf) as view:
                for r in (np.flatnonzero(fast[1:] & fast[:-1]) + 1).tolist():
                    a, b, size = image_start[r - 1], image_start[r], image_len[r]
                    repeat[r] = size == image_len[r - 1] and view[a:a + size] == view[b:b + size]
            fresh = ~repeat[rows]
            for column, col_start, col_end, dest, keep in ((0, line_start, tab1, text, None),
                                                           (1, tab1 + 1, tab2, image, fresh)):
                chosen = rows if keep is None else rows[keep]
                inside = inner[:, column] if keep is None else inner[keep, column]
                m = len(chosen)
                starts = np.empty((m, dim), np.int64)
                ends = np.empty((m, dim), np.int64)
                starts[:, 0] = col_start[chosen]
                starts[:, 1:] = inside + 1
                ends[:, :dim - 1] = inside
                ends[:, dim - 1] = col_end[chosen]
                starts, ends = starts.reshape(-1), ends.reshape(-1)
                values = dest.reshape(-1) if m == n else np.empty(m * dim, np.float32)
                for s in range(0, len(starts), _BATCH):
                    values[s:s + _BATCH], bad, token = _parse_tokens(buf, starts[s:s + _BATCH], ends[s:s + _BATCH])
                    if bad >= 0:
                        r, j = divmod(s + bad, dim)
                        errors.append((first_number + int(chosen[r]), 0,
                                       self._not_a_number(("text", "image")[column], j, token)))
                        break
                if m < n:
                    dest[chosen] = values.reshape(m, dim)
                del starts, ends, values
            if repeat.any():
                source = np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))
                image[repeat] = image[source[repeat]]
            for r, id_start, id_end in zip(rows.tolist(), (tab2[rows] + 1).tolist(), newline[rows].tolist()):
                try:
                    ids[r] = _decode_id(buf[id_start:id_end].tobytes(), first_number + r)  # strips CRLF's \r too
                except _LineError as e:
                    errors.append((e.number, 0, e.detail))
                    break
        for r in np.flatnonzero(~fast).tolist():
            if errors and min(errors)[0] < first_number + r:
                break
            try:
                text[r], image[r], ids[r] = self._slow(buf, int(line_start[r]), int(newline[r]), first_number + r)
            except _LineError as e:
                errors.append((e.number, 0, e.detail))
                break
        for what, arr in (("text", text), ("image", image)):
            bad = ~np.isfinite(arr).all(1)
            if bad.any():
                errors.append((first_number + int(np.argmax(bad)), 1, f"{what} embedding contains NaN or infinity"))
        if errors:
            number, _, detail = min(errors)
            raise _LineError(number, detail)
        self.ids.extend(ids)
        self.lines += n


def _rows_bound(nbytes, dim):
    # A line holds 2 * dim numbers of at least one byte, each followed by a separator, and an id: >= 4 * dim + 2.
    return nbytes // (4 * dim + 2) + 1


def _workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _can_fork():
    import threading
    # fork() is only safe in a single-threaded process; elsewhere (or on platforms without it) read serially.
    return hasattr(os, "fork") and threading.active_count() == 1


def _load_text(path, workers=None):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.readline()
            if not first:
                raise EmbeddingFileError(f"{path}: empty file: no embedding rows")
            dim = _line_dim(first.rstrip(b"\n"))
            workers = _workers() if workers is None else max(1, int(workers))
            if workers > 1 and size >= _PARALLEL_BYTES and _can_fork():
                cuts = [0]
                for k in range(1, workers):  # range boundaries just after a newline
                    f.seek(max(size * k // workers, cuts[-1]))
                    f.readline()
                    if f.tell() < size:
                        cuts.append(f.tell())
                cuts.append(size)
                cuts = sorted(set(cuts))
            else:
                cuts = [0, size]
        parts = _read_ranges(path, dim, cuts)
    except _LineError as e:
        raise EmbeddingFileError(f"{path}:{e.number}: {e.detail}") from None
    except OSError as e:
        raise EmbeddingFileError(f"{path}: cannot read: {e.strerror or e}") from None
    total = sum(len(p[2]) for p in parts)
    if len(parts) == 1:
        return parts[0][0], parts[0][1], np.array(parts[0][2])
    text = np.empty((total, dim), np.float32)
    image = np.empty((total, dim), np.float32)
    row = 0
    for t, i, ids in parts:
        text[row:row + len(ids)] = t
        image[row:row + len(ids)] = i
        row += len(ids)
    return text, image, np.array([k for p in parts for k in p[2]])


def _read_ranges(path, dim, cuts):
    """Read byte ranges [cuts[k], cuts[k+1]): the first here, the others in forked children writing into shared
    memory.  Returns [(text, image, ids)] per range; raises _LineError with the absolute line number."""
    import mmap
    import pickle

    children = []
    try:
        for start, stop in zip(cuts[1:-1], cuts[2:]):
            bound = _rows_bound(stop - start, dim)
            maps = [mmap.mmap(-1, max(1, bound * dim * 4)) for _ in range(2)]  # shared with the child
            out = tuple(np.frombuffer(m, np.float32)[:bound * dim].reshape(bound, dim) for m in maps)
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: parse, report (rows, ids) or the error, and leave without cleanup handlers
                status = 1
                try:
                    os.close(reader)
                    try:
                        done = _TextReader(path, dim, out).read(start, stop)
                        message = ("ok", done.lines, done.ids)
                    except _LineError as e:
                        message = ("error", e.number, e.detail)
                    with os.fdopen(writer, "wb") as pipe:
                        pickle.dump(message, pipe, protocol=pickle.HIGHEST_PROTOCOL)
                    status = 0
                finally:
                    os._exit(status)
            os.close(writer)
            children.append((pid, reader, out, maps, start, stop))
        mine = _TextReader(path, dim).read(cuts[0], cuts[1])
        parts = [mine.result()]
        offset = mine.lines
        for pid, reader, out, maps, start, stop in children:
            with os.fdopen(reader, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            message = pickle.loads(data) if data else ("crash",)
            if message[0] == "error":
                raise _LineError(offset + message[1], message[2])
            if message[0] == "ok":
                rows = message[1]
                parts.append((out[0][:rows], out[1][:rows], message[2]))
            else:  # the child died: read its range here instead
                again = _TextReader(path, dim).read(start, stop)
                rows = again.lines
                parts.append(again.result())
            offset += rows
        children = []
        return parts
    finally:
        for pid, reader, *_ in children:  # only on an error above: stop and reap the remaining children
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
