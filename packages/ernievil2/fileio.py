"""Atomic file output: everything we write appears under its final name only once complete.

A temporary file is named `.NAME.tmp-HOST-PID[.part]` beside its target, so that a later run can tell the
leftovers of a killed run (same host, process gone) from files a live process is still writing."""
import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import socket
import time
import zipfile

import numpy as np

_IMPORTED = time.time()
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


def read_json(path, error):
    """The JSON value in `path` (UTF-8); an unreadable or invalid file raises `error` (an errors.Error class)
    naming the path and the reason."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path}: not valid JSON ({e})") from None


def write_text_atomic(path, text, encoding="utf-8"):
    """Write a whole text file atomically (newlines as given)."""
    def write(tmp):
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return atomic_write(path, write)


def swap_in_folder(stage, path):
    """Replace the folder `path` by the complete folder `stage` beside it, its files flushed to disk first.  Where
    the system can exchange two names in one step (Linux renameat2), readers never see `path` missing; elsewhere
    the old folder is renamed aside (to a name `recover_folder` knows), the new one renamed in, and the old one
    removed, so a crash between the two renames leaves the old folder aside, never no folder at all.  A lock beside
    `path` names the swapping process, so that a reader's `recover_folder` does not mistake a swap in progress for
    a crashed one (and two swaps of one folder take turns)."""
    path = os.path.abspath(path)
    _fsync_tree(stage)
    with exclusive(_swap_lock_path(path)):
        _put_old_folder_back(path)
        if os.path.isdir(path) and _exchange(stage, path):
            fsync_dir(os.path.dirname(path))
            shutil.rmtree(stage, ignore_errors=True)  # it holds the old folder now
            return
        aside = _aside_path(path)
        if os.path.exists(path):
            os.replace(path, aside)
        os.replace(stage, path)
        fsync_dir(os.path.dirname(path))
        shutil.rmtree(aside, ignore_errors=True)


def recover_folder(path):
    """Finish what a crash interrupted in swap_in_folder: put the old folder back when `path` is missing, or remove it
    when `path` is there.  Returns True when a folder was put back.  Readers call it before reading `path`; while a
    live process is swapping the folder it does nothing."""
    path = os.path.abspath(path)
    if _held(_swap_lock_path(path)):
        return False
    return _put_old_folder_back(path)


def _put_old_folder_back(path):
    aside = _aside_path(path)
    if not os.path.isdir(aside):
        return False
    if os.path.exists(path):
        shutil.rmtree(aside, ignore_errors=True)
        return False
    try:
        os.replace(aside, path)
    except OSError:  # another process put it back first
        return False
    return True


def _exchange(a, b):
    """Exchange the names of two existing paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to open by name (e.g. Windows)
        return None


def _swap_lock_path(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.swap-lock")


def _aside_path(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.aside")


def _fsync_tree(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


@contextlib.contextmanager
def exclusive(path, poll=0.2):
    """Hold the lock file `path` (created with O_EXCL, naming this host and process) for the block: one process at a
    time prepares something several share (an export in the cache).  Waits while a live process of this host holds
    it; a dead holder's lock is taken over."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if _held(path):
                time.sleep(poll)
            else:
                _remove(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{_HOST} {os.getpid()}\n")
        yield
    finally:
        _remove(path)


def _held(lock):
    """Whether the lock file `lock` exists and its holder is not known to be gone (a lock of another host, or one
    being written this instant, counts as held)."""
    try:
        with open(lock, encoding="utf-8") as f:
            host, pid = f.read().split()
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return host != _HOST or process_alive(int(pid))


def process_start_time():
    """When this process started, in seconds since the epoch (from /proc: about 10 ms exact), else when this module
    was imported."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


def process_alive(pid):
    """Whether a process of this host with this id is running (a zombie, dead but not yet reaped by its parent,
    is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc here: the signal check has to do


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
    """Streams rows of named columns into an `.npz` without holding them in memory: float32 matrices [N, D] and text
    columns [N] go to raw parts beside the target, and `finish` copies them into the zip behind .npy headers,
    atomically.  `np.load` reads the result like any `np.savez` file; a text column NAME is stored compactly as
    `NAME.utf8` (uint8: the texts' UTF-8 bytes, one after the other) and `NAME.offsets` (int64 [N + 1]: where each
    text starts, and the end), so that one very long text costs its own length and not N times it; `read_strings`
    reads it back."""

    def __init__(self, path, matrices=(), strings=()):
        self.path = path
        self.matrices, self.strings = tuple(matrices), tuple(strings)
        names = self.matrices + self.strings + tuple(f"{name}.offsets" for name in self.strings)
        self.parts = {name: temp_path_for(path, f".{name}") for name in names}
        self.files = {name: open(p, "wb") for name, p in self.parts.items()}
        self.dims = dict.fromkeys(self.matrices)
        self.ends = dict.fromkeys(self.strings, 0)  # bytes of each text column so far
        self.rows = 0

    def add(self, **columns):
        """One block of rows: every column, matrices as [n, D] arrays and texts as n str."""
        counts = {name: len(value) for name, value in columns.items()}
        if set(columns) != set(self.matrices + self.strings) or len(set(counts.values())) != 1:
            raise ValueError(f"NpzWriter.add: expected {sorted(self.matrices + self.strings)} with one row count, "
                             f"got {counts}")
        for name in self.matrices:
            block = np.ascontiguousarray(columns[name], np.float32)
            if self.dims[name] not in (None, block.shape[1]):
                raise ValueError(f"NpzWriter.add: {name} has width {block.shape[1]}, earlier rows {self.dims[name]}")
            self.dims[name] = block.shape[1]
            self.files[name].write(block.tobytes())
        for name in self.strings:
            ends = []
            for text in columns[name]:
                encoded = str(text).encode("utf-8")
                self.files[name].write(encoded)
                self.ends[name] += len(encoded)
                ends.append(self.ends[name])
            self.files[f"{name}.offsets"].write(np.asarray(ends, np.int64).tobytes())
        self.rows += next(iter(counts.values()))

    def finish(self, extra=None):
        """Write the .npz (plus `extra`: {name: small array}) under its final name; returns the path."""
        for f in self.files.values():
            f.close()
        with atomic_path(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in self.matrices:
                _write_npy(zf, name, "<f4", (self.rows, self.dims[name] or 0), _chunks(self.parts[name]))
            for name in self.strings:
                _write_npy(zf, f"{name}.utf8", "|u1", (self.ends[name],), _chunks(self.parts[name]))
                offsets = _chunks(self.parts[f"{name}.offsets"])
                _write_npy(zf, f"{name}.offsets", "<i8", (self.rows + 1,), [bytes(8), *offsets])
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


def string_columns(npz):
    """The names of the text columns of an open .npz (np.load): NpzWriter's, and fixed-width unicode vectors."""
    names = [n[:-len(".utf8")] for n in npz.files if n.endswith(".utf8") and f"{n[:-5]}.offsets" in npz.files]
    parts = {f"{n}.utf8" for n in names} | {f"{n}.offsets" for n in names}
    return names + [n for n in npz.files if n not in parts and npz[n].dtype.kind == "U" and npz[n].ndim == 1]


def has_strings(npz, name):
    """Whether an open .npz has the text column `name` (either layout)."""
    return name in npz.files or f"{name}.utf8" in npz.files


def read_strings(npz, name, start=0, stop=None):
    """Rows [start, stop) of the text column `name` of an open .npz (np.load) as a list of str: NpzWriter's layout
    (`NAME.utf8` + `NAME.offsets`) or a fixed-width unicode array (files of older versions, np.savez).  KeyError
    when the column is missing; ValueError when its parts do not fit together."""
    if name in npz.files:
        return [str(text) for text in npz[name][start:stop]]
    data, offsets = npz[f"{name}.utf8"], npz[f"{name}.offsets"]
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data) \
            or (np.diff(offsets) < 0).any():
        raise ValueError(f"text column {name}: offsets do not fit its {len(data)} bytes")
    raw = memoryview(data)
    ends = offsets[start:None if stop is None else stop + 1]
    return [bytes(raw[a:b]).decode("utf-8") for a, b in zip(ends[:-1].tolist(), ends[1:].tolist())]


def _write_npy(zf, name, descr, shape, chunks):
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_2_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
        for chunk in chunks:
            out.write(chunk)


def _chunks(path, size=1 << 22):
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block
