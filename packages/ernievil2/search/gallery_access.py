"""Reading a gallery's images back by id (for thumbnails): files under a folder, or rows of a TSV located through
byte offsets recorded when the index was built.  Nothing outside the gallery can be reached."""
import base64
import os

import numpy as np

from ..errors import ConfigError, InputError


def describe_gallery(path):
    """{"kind": "folder" | "tsv", "path": absolute path} of a gallery source."""
    if os.path.isdir(path):
        return {"kind": "folder", "path": os.path.abspath(path)}
    if os.path.isfile(path):
        return {"kind": "tsv", "path": os.path.abspath(path)}
    raise InputError(f"{path}: gallery not found (the folder or TSV the images were embedded from)")


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
                key = (cols[0] if len(cols) == 2 else cols[1]).strip().decode("utf-8", "replace")
                row = wanted.get(key)
                if row is not None and offsets[row] < 0:
                    offsets[row] = position
                    texts[row] = cols[0].decode("utf-8", "replace") if len(cols) > 2 else None
            position += len(raw)
    return offsets, texts


class GalleryReader:
    """`image_bytes(id)` -> the encoded image of an indexed id, or None for an id that is not in the index."""

    def __init__(self, gallery, ids, offsets=None):
        self.kind, self.root = gallery["kind"], gallery["path"]
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.offsets = offsets
        if self.kind == "tsv" and offsets is None:
            raise ConfigError(f"{self.root}: no row offsets recorded for this TSV gallery; build the index again")

    def image_bytes(self, image_id):
        row = self.rows.get(image_id)
        if row is None:
            return None
        if self.kind == "folder":
            root = os.path.realpath(self.root)
            path = os.path.realpath(os.path.join(root, image_id))
            if os.path.commonpath([root, path]) != root:  # an id such as ../../etc/passwd
                return None
            with open(path, "rb") as f:
                return f.read()
        offset = int(self.offsets[row])
        if offset < 0:
            return None
        with open(self.root, "rb") as f:
            f.seek(offset)
            cols = f.readline().rstrip(b"\r\n").split(b"\t")
        return base64.b64decode(cols[1] if len(cols) == 2 else cols[2])
