"""Atomic file output: everything we write appears under its final name only once complete.

A temporary file is named `.NAME.tmp-HOST-PID[.part]` beside its target, so that a later run can tell the
leftovers of a killed run (same host, process gone) from files a live process is still writing."""
import contextlib
import os
import re
import shutil
import socket

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"


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
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path), then rename onto `path`: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return path


def write_text_atomic(path, text, encoding="utf-8"):
    """Write a whole text file atomically (newlines as given)."""
    def write(tmp):
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return atomic_write(path, write)


def _process_alive(pid):
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
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            _remove(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
