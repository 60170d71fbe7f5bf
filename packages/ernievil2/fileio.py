"""Atomic file output: everything we write appears under its final name only once complete."""
import contextlib
import os


def temp_path_for(path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path), then rename onto `path`: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error remove it."""
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
