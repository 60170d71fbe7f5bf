"""The index a running service searches, swapped whole when INDEX_DIR changes (a rebuild or a sync).

A request takes `live.current` once, a Snapshot (index, gallery reader, version), and uses only it: a swap
loads the new index completely first and then replaces that one reference, so a request in flight finishes on
the index it started with and no request ever sees a half-loaded one.  What triggers a reload: `poll(seconds)`
(a thread comparing the manifest's identity: its version, inode, size, mtime and the folder's inode) and
`reload()` (the service's POST /admin/reload).  While the folder is being swapped (briefly missing) or a new
index does not load, the old one keeps serving and the next poll tries again."""
import logging
import os
import threading
import time

from ..errors import ConfigError, Error
from ..search.index import MANIFEST, SearchIndex, read_manifest

logger = logging.getLogger(__name__)


class Snapshot:
    def __init__(self, index, gallery, key):
        self.index, self.gallery, self.key = index, gallery, key
        self.version = index.manifest.get("version")
        self.loaded_at = time.time()


class LiveIndex:
    def __init__(self, index_dir):
        self.dir = os.path.abspath(index_dir)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.reloads = 0
        self.current = self._load()

    def identity(self):
        """What changes whenever INDEX_DIR is rebuilt or synced; OSError while the folder is being swapped."""
        manifest = read_manifest(self.dir)
        folder, st = os.stat(self.dir), os.stat(os.path.join(self.dir, MANIFEST))
        return (manifest.get("version"), folder.st_ino, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self):
        """A fully loaded Snapshot whose files all belong to one state of the folder (retried if it moved)."""
        for _ in range(5):
            before = self.identity()
            index = SearchIndex(self.dir)
            gallery = index.gallery_reader()
            if self.identity() == before:
                return Snapshot(index, gallery, before)
        raise ConfigError(f"{os.path.basename(self.dir)}: the index kept changing while it was being loaded")

    def reload(self, force=False):
        """Load INDEX_DIR again if it changed (or always, with force) and swap it in; True when swapped.  Raises
        the load's error (the old index stays)."""
        with self._reload_lock:
            if not force and self.identity() == self.current.key:
                return False
            fresh = self._load()
            old = self.current.index
            if fresh.index.dim != old.dim:
                raise ConfigError(f"{os.path.basename(self.dir)}: the new index has dimension {fresh.index.dim}, "
                                  f"the served one {old.dim} (another model?); restart serve to switch models")
            self.current = fresh  # the swap: one reference
            self.reloads += 1
            logger.info("index reloaded: %d items, version %s", fresh.index.count, fresh.version)
            return True

    def poll(self, seconds):
        """Check INDEX_DIR every `seconds` in a daemon thread until stop()."""
        def loop():
            while not self._stop.wait(seconds):
                try:
                    self.reload()
                except (Error, OSError, ValueError) as e:
                    logger.warning("index reload skipped, still serving the loaded index: %s", e)
        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="ernievil2-index-poll", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
