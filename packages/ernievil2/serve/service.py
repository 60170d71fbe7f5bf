"""What every route shares: the model, the live index, the worker pools, the thumbnails, the settings, and one
way to fail (ServiceError -> a JSON error body with no absolute path and no file bytes in it)."""
import dataclasses
import os
import re
import threading

from ..errors import Error, GalleryChangedError
from .thumbnails import Thumbnails
from .workers import Busy, TimedOut, WorkerPool


@dataclasses.dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # the bound address: Host headers must name it (or localhost, or allow_hosts)
    allow_hosts: tuple = ()  # more Host names to answer to ("*": any)
    max_upload_bytes: int = 10 << 20  # one image (an upload, or one data URL once decoded)
    workers: int = 2  # threads decoding and embedding queries (model calls themselves run one at a time)
    queue_size: int = 32  # calls that may wait for a worker; one more is a 503
    timeout: float = 30.0  # seconds a request waits for its worker before a 504
    reload_seconds: float = 2.0  # how often INDEX_DIR is checked for a newer index (0: only POST /admin/reload)
    thumbnail_cache_bytes: int = 32 << 20
    max_embedding_inputs: int = 256  # inputs in one POST /v1/embeddings
    max_batch: int = 64  # queries in one POST /search/batch

    @property
    def max_body_bytes(self):
        """A request body: one image as base64 plus room for form fields and JSON."""
        return self.max_upload_bytes * 4 // 3 + (1 << 20)


class ServiceError(Exception):
    def __init__(self, status, message, headers=None, param=None):
        super().__init__(message)
        self.status, self.message, self.headers, self.param = status, message, headers or {}, param


class Service:
    def __init__(self, model, live, settings):
        self.model, self.live, self.settings = model, live, settings
        self.model_lock = threading.Lock()  # one engine call at a time: predictors are not re-entrant
        self.pool = WorkerPool("model", settings.workers, settings.queue_size, settings.timeout)
        self.thumbnail_pool = WorkerPool("thumbnails", 2, 64, settings.timeout)
        self.thumbnails = Thumbnails(model.max_image_pixels, settings.thumbnail_cache_bytes)

    @property
    def pools(self):
        return (self.pool, self.thumbnail_pool)

    async def run(self, fn, *args, pool=None):
        """fn(*args) on a worker; the pool's refusals and the library's errors become ServiceErrors."""
        try:
            return await (pool or self.pool).run(fn, *args)
        except Busy as e:
            raise ServiceError(503, "the service is busy; retry shortly",
                               {"Retry-After": str(e.retry_after)}) from None
        except TimedOut as e:
            raise ServiceError(504, f"the request took too long ({e})") from None
        except GalleryChangedError as e:
            raise ServiceError(409, str(e)) from None
        except Error as e:
            raise ServiceError(400, str(e)) from None

    def encode(self, fn, *args):
        """Call the model (from a worker thread) with the model lock held."""
        with self.model_lock:
            return fn(*args)

    def shutdown(self):
        self.live.stop()
        for pool in self.pools:
            pool.shutdown()


_BYTES_REPR = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1""")
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.~])(?:/[^\s/'"():;,]+){2,}/?|\b[A-Za-z]:\\[^\s'"():;,]+""")


def public_message(message):
    """An error message fit for a client: a bytes repr becomes <bytes>, an absolute path its last part."""
    message = _BYTES_REPR.sub("<bytes>", str(message))
    return _ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/\\").replace("\\", "/")) or "<path>",
                              message)
