"""Reading the official 3-column embedding text file (`text_emb \t image_emb \t image_id`) fast and exactly.

The file is read in 4 MB chunks; numpy locates the newlines, tabs and spaces, and `decimal_parse` turns the
tokens into float32 in place.  Irregular lines go through a careful slow path that also words the error.  An
image column identical to the previous line's (the captions of one image, one after another) is copied
instead of parsed.  Files from 32 MB up are split into one byte range per CPU, read by forked processes into
shared memory.
"""
import os
import types

import numpy as np

from ..errors import EmbeddingFileError
from .decimal_parse import _BATCH, _PAD, _parse_tokens

_READ_CHUNK = 1 << 22  # bytes of text read and parsed at a time
_PARALLEL_BYTES = 1 << 25  # text files from 32 MB up are parsed by one process per CPU


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
        lines = _locate_lines(buf, lo, hi, self.dim)
        n = len(lines.newline)
        first_number = self.lines + 1
        text, image = self._rows(n, lines.newline[0] + 1 - lo)
        ids = [None] * n
        errors = []  # (line number, rank, detail): the earliest line's is raised, format before NaN
        rows = np.flatnonzero(lines.fast)
        if len(rows):
            self._parse_fast_lines(buf, lines, rows, text, image, ids, errors, first_number)
        for r in np.flatnonzero(~lines.fast).tolist():
            if errors and min(errors)[0] < first_number + r:
                break
            try:
                text[r], image[r], ids[r] = self._slow(buf, int(lines.start[r]), int(lines.newline[r]),
                                                       first_number + r)
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

    def _parse_fast_lines(self, buf, lines, rows, text, image, ids, errors, first_number):
        """The regular lines (`rows`): numbers parsed in place from the space positions, ids decoded."""
        n, dim = len(lines.newline), self.dim
        space = lines.space
        if len(rows) < n or len(space) != n * 2 * (dim - 1):  # keep only spaces inside fast embeddings
            owner = np.searchsorted(lines.newline, space)
            space = space[lines.fast[owner] & (space < lines.tab2[owner])]
        inner = space.reshape(len(rows), 2, dim - 1)
        repeat = _repeated_image_columns(buf, lines)
        fresh = ~repeat[rows]
        for column, col_start, col_end, dest, keep in ((0, lines.start, lines.tab1, text, None),
                                                       (1, lines.tab1 + 1, lines.tab2, image, fresh)):
            chosen = rows if keep is None else rows[keep]
            inside = inner[:, column] if keep is None else inner[keep, column]
            failure = _parse_column(buf, chosen, inside, col_start, col_end, dest, n, dim)
            if failure:
                r, j, token = failure
                errors.append((first_number + r, 0, self._not_a_number(("text", "image")[column], j, token)))
        if repeat.any():
            source = np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))
            image[repeat] = image[source[repeat]]
        for r, id_start, id_end in zip(rows.tolist(), (lines.tab2[rows] + 1).tolist(), lines.newline[rows].tolist()):
            try:
                ids[r] = _decode_id(buf[id_start:id_end].tobytes(), first_number + r)  # strips CRLF's \r too
            except _LineError as e:
                errors.append((e.number, 0, e.detail))
                break


def _locate_lines(buf, lo, hi, dim):
    """Separator positions of the lines in buf[lo:hi], and which lines are regular: exactly two tabs and
    dim - 1 spaces in each embedding column (their tokens then come straight from the space positions)."""
    sep = np.flatnonzero(buf[lo:hi] <= 32)  # every space, tab and newline (and other control bytes)
    sep += lo
    kind = buf[sep]
    newline, tab, space = sep[kind == 10], sep[kind == 9], sep[kind == 32]
    start = np.empty(len(newline), np.int64)
    start[0] = lo
    start[1:] = newline[:-1] + 1
    tabs_before = np.searchsorted(tab, newline)  # tabs before each line's end
    fast = np.diff(tabs_before, prepend=0) == 2
    tab1 = tab[np.maximum(tabs_before - 2, 0)] if len(tab) else np.zeros(len(newline), np.int64)
    tab2 = tab[np.maximum(tabs_before - 1, 0)] if len(tab) else np.zeros(len(newline), np.int64)
    if fast.any():
        in_line = np.searchsorted(space, start)
        in_text = np.searchsorted(space, tab1)
        in_image = np.searchsorted(space, tab2)
        fast &= (in_text - in_line == dim - 1) & (in_image - in_text == dim - 1)
    return types.SimpleNamespace(newline=newline, space=space, start=start, fast=fast, tab1=tab1, tab2=tab2)


def _repeated_image_columns(buf, lines):
    """Lines whose image column repeats the previous line's bytes (the captions of one image, one after
    another): they copy that row instead of parsing it again -- identical text, identical values."""
    fast = lines.fast
    repeat = np.zeros(len(fast), np.bool_)
    image_start, image_len = (lines.tab1 + 1).tolist(), (lines.tab2 - lines.tab1 - 1).tolist()
    with memoryview(buf) as view:
        for r in (np.flatnonzero(fast[1:] & fast[:-1]) + 1).tolist():
            a, b, size = image_start[r - 1], image_start[r], image_len[r]
            repeat[r] = size == image_len[r - 1] and view[a:a + size] == view[b:b + size]
    return repeat


def _parse_column(buf, chosen, inside, col_start, col_end, dest, n, dim):
    """Parse one embedding column of the `chosen` lines into dest; returns (line, value index, token) of the
    first value float() rejects, or None."""
    m = len(chosen)
    starts = np.empty((m, dim), np.int64)
    ends = np.empty((m, dim), np.int64)
    starts[:, 0] = col_start[chosen]
    starts[:, 1:] = inside + 1
    ends[:, :dim - 1] = inside
    ends[:, dim - 1] = col_end[chosen]
    starts, ends = starts.reshape(-1), ends.reshape(-1)
    values = dest.reshape(-1) if m == n else np.empty(m * dim, np.float32)
    failure = None
    for s in range(0, len(starts), _BATCH):
        values[s:s + _BATCH], bad, token = _parse_tokens(buf, starts[s:s + _BATCH], ends[s:s + _BATCH])
        if bad >= 0:
            r, j = divmod(s + bad, dim)
            failure = (int(chosen[r]), j, token)
            break
    if m < n:
        dest[chosen] = values.reshape(m, dim)
    return failure


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


def load_text(path, workers=None):
    """(text [N, D], image [N, D], ids [N]) of a 3-column text file; EmbeddingFileError naming path:line."""
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
