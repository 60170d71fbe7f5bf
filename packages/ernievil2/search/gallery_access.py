"""Reading a gallery's images back by id (for thumbnails): files under a folder, or rows of a TSV located through
byte offsets recorded when the index was built.  Nothing outside the gallery can be reached.

A TSV gallery is fingerprinted at build time (size, mtime, SHA-256 of the whole file): the offsets are only right
for that very file, so a reader refuses (GalleryChangedError) once the file's content differs, and checks that
the row it seeks to carries the id it was asked for."""
import hashlib
import os
import threading

import numpy as np

from ..data.images import decode_base64
from ..errors import ConfigError, GalleryChangedError, InputError

_HASH_BLOCK = 1 << 22


def describe_gallery(path):
    """{"kind": "folder" | "tsv", "path": absolute path} of a gallery source; a TSV also gets its "fingerprint"."""
    if os.path.isdir(path):
        return {"kind": "folder", "path": os.path.abspath(path)}
    if os.path.isfile(path):
        return {"kind": "tsv", "path": os.path.abspath(path), "fingerprint": file_fingerprint(path)}
    raise InputError(f"{path}: gallery not found (the folder or TSV the images were embedded from)")


def file_fingerprint(path):
    """{"size", "mtime_ns", "sha256"} of a file (the hash reads it whole)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tsv_offsets(path, ids):
    """(byte offset of each id's row, its text) in a TSV of `image_id \\t base64` rows or `text \\t image_id \\t
    base64 ...` rows (an id's first row counts; its caption is the text, None for 2-column rows); offset -1 and
    text None for an id the file lacks."""
    wanted = {image_id: i for i, image_id in enumerate(ids)}
    offsets = np.full(len(ids), -1, np.int64)
    texts = [None] * len(ids)
    position = 0
    with open(path, "rb") as f:
        for raw in f:
            cols = raw.split(b"\t", 3)
            if len(cols) >= 2:
                key = _row_id(cols)
                row = wanted.get(key)
                if row is not None and offsets[row] < 0:
                    offsets[row] = position
                    texts[row] = cols[0].decode("utf-8", "replace") if len(cols) > 2 else None
            position += len(raw)
    return offsets, texts


def _row_id(cols):
    return (cols[0] if len(cols) == 2 else cols[1]).strip().decode("utf-8", "replace")


class GalleryReader:
    """`image_bytes(id)` -> the encoded image of an indexed id, or None for an id that is not in the index;
    `stamp(id)` -> a value that changes whenever that image's bytes may have changed (for caches)."""

    def __init__(self, gallery, ids, offsets=None):
        self.kind, self.root = gallery["kind"], gallery["path"]
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.offsets = offsets
        if self.kind == "tsv" and offsets is None:
            raise ConfigError(f"{self.root}: no row offsets recorded for this TSV gallery; build the index again")
        self.fingerprint = gallery.get("fingerprint")
        self._checked = {}  # (size, mtime_ns) of the TSV -> whether its content is the fingerprinted one
        self._lock = threading.Lock()

    def image_bytes(self, image_id):
        row = self.rows.get(image_id)
        if row is None:
            return None
        if self.kind == "folder":
            path = self._folder_path(image_id)
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()
        offset = int(self.offsets[row])
        if offset < 0:
            return None
        self._check_tsv_unchanged()
        with open(self.root, "rb") as f:
            f.seek(offset)
            cols = f.readline().rstrip(b"\r\n").split(b"\t")
        if len(cols) < 2 or _row_id(cols) != image_id:  # stale offsets, even where size and mtime were kept
            raise self._changed("the row recorded for this id now holds another id")
        return decode_base64(cols[1] if len(cols) == 2 else cols[2])

    def stamp(self, image_id):
        """(size, mtime_ns) of the file an id's image is read from, or None when it cannot be stat'ed."""
        path = self._folder_path(image_id) if self.kind == "folder" else self.root
        try:
            st = os.stat(path) if path else None
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns) if st else None

    def _folder_path(self, image_id):
        root = os.path.realpath(self.root)
        path = os.path.realpath(os.path.join(root, image_id))
        if os.path.commonpath([root, path]) != root:  # an id such as ../../etc/passwd
            return None
        return path

    def _check_tsv_unchanged(self):
        """A stat per call; the whole file is hashed again only when its size and mtime differ from a state
        already judged (a `touch` keeps it usable, an edit does not)."""
        if not self.fingerprint:  # an index from before fingerprints: only the per-row id check
            return
        st = os.stat(self.root)
        state = (st.st_size, st.st_mtime_ns)
        same = self._checked.get(state)
        if same is None:
            with self._lock:
                same = self._checked.get(state)
                if same is None:
                    same = (state[0] == self.fingerprint["size"]
                            and (state[1] == self.fingerprint["mtime_ns"]
                                 or _sha256(self.root) == self.fingerprint["sha256"]))
                    self._checked[state] = same
        if not same:
            raise self._changed("its size or content differs from the fingerprint recorded at build time")

    def _changed(self, why):
        return GalleryChangedError(f"the gallery file {os.path.basename(self.root)} changed after the index was "
                                   f"built ({why}); sync or rebuild the index to show its images")
