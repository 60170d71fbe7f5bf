"""Rows (non-blank lines) of one or more text files, addressed by a global row number with no per-row data in
memory: each file's row offsets are found once by a vectorised newline scan, saved in a cache of offset files and
memory-mapped afterwards.  Line numbers (for `file:line` messages) come from the few blank lines' positions.

Cache: $ERNIEVIL2_CACHE/row_index (default ~/.cache/ernievil2/row_index), one `.npz`-free pair of `.npy` files
per (absolute path, size, modification time): a changed file gets a new entry.
"""
import hashlib
import json
import os

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write, cache_home, write_text_atomic
from .tsv import expand_sources

SCAN_BLOCK = 1 << 24  # bytes scanned per step: the temporaries stay small
_WHITESPACE = np.zeros(256, np.bool_)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() removes


def cache_root():
    return os.path.join(cache_home(), "row_index")


def scan_rows(path):
    """(offsets int64 [rows]: the start of every non-blank line, blank_next int64: for every blank line, the
    row number of the next non-blank line) of one file, read in SCAN_BLOCK steps.  Per byte only the newline
    search runs; a line counts as blank after a closer look only when it starts with whitespace."""
    offsets, blank_next = [], []
    rows, position = 0, 0
    line_start, line_content = 0, False  # the line in progress (it may have begun in an earlier block)
    with open(path, "rb") as f:
        while block := f.read(SCAN_BLOCK):
            buf = np.frombuffer(block, np.uint8)
            newlines = np.flatnonzero(buf == 10)
            if len(newlines):
                seg_starts = np.concatenate(([0], newlines[:-1] + 1))
                first = buf[np.minimum(seg_starts, len(buf) - 1)]
                has_content = (seg_starts < newlines) & ~_WHITESPACE[first]
                for k in np.flatnonzero(~has_content).tolist():  # empty, or starting with whitespace: look closer
                    has_content[k] = bool(block[seg_starts[k]:newlines[k]].strip())
                has_content[0] |= line_content
                starts = seg_starts.astype(np.int64) + position
                starts[0] = line_start
                rows = _record(offsets, blank_next, starts, has_content, rows)
                line_start = position + int(newlines[-1]) + 1
                line_content = bool(block[int(newlines[-1]) + 1:].strip())
            else:
                line_content = line_content or bool(block.strip())
            position += len(block)
    if line_start < position:  # a last line without a newline
        rows = _record(offsets, blank_next, np.array([line_start], np.int64), np.array([line_content]), rows)
    return (np.concatenate(offsets) if offsets else np.zeros(0, np.int64)), np.asarray(blank_next, np.int64)


def _record(offsets, blank_next, line_starts, has_content, rows):
    """Append the non-blank lines' starts; note, for each blank line, which row comes next."""
    kept = line_starts[has_content].astype(np.int64)
    offsets.append(kept)
    blanks = np.flatnonzero(~has_content)
    if len(blanks):
        # a blank line's next row: rows so far + the non-blank lines before it in this step
        before = np.cumsum(has_content)[blanks] - has_content[blanks]
        blank_next.extend((rows + before).tolist())
    return rows + len(kept)


class FileRows:
    """One file's rows: memory-mapped offsets, the blank-line table, and its row count."""

    def __init__(self, path):
        self.path = path
        self.offsets, self.blank_next = _cached_scan(path)
        self.count = len(self.offsets)

    def __getstate__(self):  # a worker process maps the cached offsets itself instead of receiving a copy
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def line_number(self, row):
        """1-based line of the row-th non-blank line."""
        return row + 1 + int(np.searchsorted(self.blank_next, row, side="right"))


class RowIndex:
    """The rows of a TSV file, a directory of *.tsv shards, a glob or a list of these, in file order."""

    def __init__(self, spec, what="input"):
        self.files = expand_sources(spec, what=what)
        self.shards = [FileRows(path) for path in self.files]
        self.counts = np.array([s.count for s in self.shards], np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)))
        if self.starts[-1] == 0:
            raise InputError(f"{', '.join(self.files)}: no rows")
        self._handles, self._handles_pid = {}, os.getpid()

    def __len__(self):
        return int(self.starts[-1])

    def locate(self, i):
        """(shard number, row within that shard) of global row i."""
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return shard, int(i - self.starts[shard])

    def location(self, i):
        shard, row = self.locate(i)
        return self.files[shard], self.shards[shard].line_number(row)

    def read(self, i):
        """(path, line number, raw bytes without the newline) of global row i."""
        shard, row = self.locate(i)
        path = self.files[shard]
        if self._handles_pid != os.getpid():
            # A forked data-loader worker inherits the parent's handles, whose file position it would share
            # (concurrent seek + readline then read each other's rows): each process opens its own.
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:  # opened lazily, so every data-loader worker has its own file handles
            handle = self._handles[path] = open(path, "rb")
        handle.seek(int(self.shards[shard].offsets[row]))
        return path, self.shards[shard].line_number(row), handle.readline().rstrip(b"\r\n")

    def iter_raw(self, start, stop):
        """(path, line number, raw bytes without the newline) of rows [start, stop), read sequentially."""
        shard, row = self.locate(start) if start < len(self) else (len(self.shards), 0)
        remaining = stop - start
        while remaining > 0 and shard < len(self.shards):
            rows = self.shards[shard]
            take = min(remaining, rows.count - row)
            if take > 0:
                yield from _read_lines(rows, row, take)
            remaining -= take
            shard, row = shard + 1, 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def _read_lines(rows, first, count):
    """`count` non-blank lines of one file from its row `first` on, with their line numbers."""
    line = rows.line_number(first)
    with open(rows.path, "rb") as f:
        f.seek(int(rows.offsets[first]))
        while count:
            raw = f.readline()
            if not raw:
                return
            if raw.strip():
                yield rows.path, line, raw.rstrip(b"\r\n")
                count -= 1
            line += 1


def prepare_row_index(spec, part=0, parts=1, what="input"):
    """Scan into the cache this process's share of the files of `spec` (every `parts`-th, from `part`), so that
    processes sharing a cache (the ranks of a machine) scan in parallel; RowIndex then only maps the offsets."""
    for path in expand_sources(spec, what=what)[part::max(1, parts)]:
        if not _cache_entry(path)[2]:
            _cached_scan(path)


def _cache_entry(path):
    """(cache entry name, its key, whether it is complete) of this exact file (path, size, mtime)."""
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    entry = os.path.join(cache_root(), hashlib.sha1(key.encode()).hexdigest()[:20])
    try:
        with open(f"{entry}.json", encoding="utf-8") as f:
            return entry, key, json.load(f) == json.loads(key)
    except (OSError, ValueError):
        return entry, key, False


def _cached_scan(path):
    """The scan of `path`, from the cache when it holds one for this exact file (path, size, mtime)."""
    entry, key, complete = _cache_entry(path)
    offsets_file, blanks_file, meta_file = (f"{entry}.offsets.npy", f"{entry}.blanks.npy", f"{entry}.json")
    if complete:
        try:
            return np.load(offsets_file, mmap_mode="r"), np.load(blanks_file)
        except (OSError, ValueError):
            pass
    offsets, blanks = scan_rows(path)
    try:
        os.makedirs(cache_root(), exist_ok=True)
        atomic_write(offsets_file, lambda tmp: _save(tmp, offsets))
        atomic_write(blanks_file, lambda tmp: _save(tmp, blanks))
        write_text_atomic(meta_file, key)  # last: its presence means the entry is complete
        return np.load(offsets_file, mmap_mode="r"), blanks
    except OSError:
        return offsets, blanks  # a read-only cache: keep the scan in memory


def _save(tmp, array):
    with open(tmp, "wb") as f:
        np.save(f, array)
