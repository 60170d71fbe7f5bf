"""Atomic file output: everything we write appears under its final name only once complete.

A temporary file is named `.NAME.tmp-HOST-PID[.part]` beside its target, so that a later run can tell the
leftovers of a killed run (same host, process gone) from files a live process is still writing."""
import contextlib
import os
import re
import shutil
import socket
import zipfile

import numpy as np

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"


def cache_home():
    """The folder of everything computed once and reused (exports, row indexes): $ERNIEVIL2_CACHE, else
    $XDG_CACHE_HOME/ernievil2, else ~/.cache/ernievil2."""
    return os.environ.get("ERNIEVIL2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ernievil2")


def temp_path_for(path, part=""):
    """A hidden temporary name beside `path` owned by this process (`part` tells several apart)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{os.path.basename(path)}.tmp-{_HOST}-{os.getpid()}{part}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error remove it."""
    tmp = temp_path_for(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        _remove(tmp)


class AtomicFile:
    """A binary file written under a temporary name beside `path`: `publish()` renames it onto `path` once complete,
    `discard()` (also after publish: a no-op) removes it.  For outputs written piece by piece over a long run."""

    def __init__(self, path):
        self.path, self.tmp = path, temp_path_for(path)
        self.file = open(self.tmp, "wb")

    def write(self, data):
        self.file.write(data)

    def publish(self):
        self.file.close()
        publish(self.tmp, self.path)

    def discard(self):
        self.file.close()
        _remove(self.tmp)


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path), then rename onto `path`: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return path


def publish(tmp, path):
    """Rename a complete temporary file onto `path`; its bytes are on disk first (fsync), and so is the rename
    (fsync of the folder), so that a crash never leaves a complete-looking file with missing bytes."""
    if os.path.isfile(tmp):
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(directory):
    """Make the renames in `directory` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write a whole text file atomically (newlines as given)."""
    def write(tmp):
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return atomic_write(path, write)


def process_alive(pid):
    """Whether a process of this host with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path):
    """Remove the temporaries that killed runs left beside `path` (only this module's naming pattern, only
    this host's, only when their process is gone); a `*` in the file name matches any characters.  Returns
    the removed paths."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = re.escape(f".{os.path.basename(path)}.tmp-{_HOST}-").replace(r"\*", ".*")
    pattern = re.compile(prefix + r"(\d+)(?:\..*)?\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            _remove(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class NpzWriter:
    """Streams rows of named columns into an `.npz` without holding them in memory: float32 matrices [N, D] and
    unicode string vectors [N] go to raw parts beside the target, and `finish` copies them into the zip behind
    .npy headers, atomically.  `np.load` reads the result like any `np.savez` file."""

    def __init__(self, path, matrices=(), strings=()):
        self.path = path
        self.matrices, self.strings = tuple(matrices), tuple(strings)
        self.parts = {name: temp_path_for(path, f".{name}") for name in self.matrices + self.strings}
        self.files = {name: open(p, "wb") for name, p in self.parts.items()}
        self.dims = dict.fromkeys(self.matrices)
        self.longest = dict.fromkeys(self.strings, 1)
        self.rows = 0

    def add(self, **columns):
        """One block of rows: every column, matrices as [n, D] arrays and strings as n str."""
        counts = {name: len(value) for name, value in columns.items()}
        if set(columns) != set(self.parts) or len(set(counts.values())) != 1:
            raise ValueError(f"NpzWriter.add: expected {sorted(self.parts)} with one row count, got {counts}")
        for name in self.matrices:
            block = np.ascontiguousarray(columns[name], np.float32)
            if self.dims[name] not in (None, block.shape[1]):
                raise ValueError(f"NpzWriter.add: {name} has width {block.shape[1]}, earlier rows {self.dims[name]}")
            self.dims[name] = block.shape[1]
            self.files[name].write(block.tobytes())
        for name in self.strings:
            for text in columns[name]:
                encoded = str(text).encode("utf-8")
                self.files[name].write(len(encoded).to_bytes(4, "little") + encoded)
                self.longest[name] = max(self.longest[name], len(str(text)))
        self.rows += next(iter(counts.values()))

    def finish(self, extra=None):
        """Write the .npz (plus `extra`: {name: small array}) under its final name; returns the path."""
        for f in self.files.values():
            f.close()
        with atomic_path(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in self.matrices:
                _write_npy(zf, name, "<f4", (self.rows, self.dims[name] or 0), _chunks(self.parts[name]))
            for name in self.strings:
                _write_npy(zf, name, f"<U{self.longest[name]}", (self.rows,), self._strings(name))
            for name, value in (extra or {}).items():
                value = np.asarray(value)  # (ascontiguousarray would make a 0-d array 1-d)
                _write_npy(zf, name, value.dtype.str, value.shape, [value.tobytes(order="C")])
        self.cleanup()
        return self.path

    def cleanup(self):
        """Close and remove the parts (finish does; call it when giving up)."""
        for name, path in self.parts.items():
            self.files[name].close()
            _remove(path)

    def _strings(self, name, per_chunk=4096):
        with open(self.parts[name], "rb") as f:
            batch = []
            while True:
                head = f.read(4)
                if head:
                    batch.append(f.read(int.from_bytes(head, "little")).decode("utf-8"))
                if len(batch) == per_chunk or (not head and batch):
                    yield np.array(batch, dtype=f"<U{self.longest[name]}").tobytes()
                    batch = []
                if not head:
                    return


def _write_npy(zf, name, descr, shape, chunks):
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_2_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
        for chunk in chunks:
            out.write(chunk)


def _chunks(path, size=1 << 22):
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block
