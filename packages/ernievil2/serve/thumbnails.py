"""JPEG thumbnails of gallery images: decoded under the model's pixel limit, scaled to a bounded side, and kept
in an LRU cache keyed by gallery, id, size and the image file's (size, mtime), so that a changed file is drawn
again while repeated views cost nothing."""
import threading
from collections import OrderedDict

import cv2
import numpy as np

from ..data.images import decode_image

DEFAULT_SIDE = 256
MAX_SIDE = 512
MIN_SIDE = 16


class Thumbnails:
    def __init__(self, max_pixels, cache_bytes=32 << 20):
        self.max_pixels = max_pixels
        self.cache_bytes = cache_bytes
        self._cache = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, gallery, image_id, side=DEFAULT_SIDE):
        """JPEG bytes; None for an id the gallery does not hold; ValueError for an image that cannot be shown;
        the gallery's own errors (GalleryChangedError, OSError) pass through."""
        side = min(MAX_SIDE, max(MIN_SIDE, int(side)))
        key = (gallery.root, image_id, side, gallery.stamp(image_id))  # these determine the bytes
        with self._lock:
            jpeg = self._cache.get(key)
            if jpeg is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return jpeg
        data = gallery.image_bytes(image_id)
        if data is None:
            return None
        jpeg = thumbnail_jpeg(data, side, self.max_pixels)
        with self._lock:
            self.misses += 1
            if key not in self._cache and len(jpeg) <= self.cache_bytes:
                self._cache[key] = jpeg
                self._size += len(jpeg)
                while self._size > self.cache_bytes:
                    _, dropped = self._cache.popitem(last=False)
                    self._size -= len(dropped)
        return jpeg


def thumbnail_jpeg(data, side, max_pixels):
    """Encoded image -> JPEG whose longer side is at most `side` (smaller images keep their size)."""
    rgb = decode_image(data, max_pixels=max_pixels)
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("cannot encode a thumbnail")
    return jpeg.tobytes()
