"""A bounded pool of worker threads for the service's slow work (decoding, the model, thumbnails), so that the
event loop only parses requests and writes answers: `/healthz` stays instant however busy the model is.

At most `workers + queue_size` calls are admitted at once (running or waiting); one more is refused at once
with Busy (HTTP 503), and a caller stops waiting after `timeout` seconds (TimedOut, HTTP 504).  A call that
timed out keeps its place until its thread is done with it, so the bound holds for real work, not just callers.
Threads suffice: Paddle, OpenVINO, OpenCV and faiss release the GIL in their kernels."""
import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import ConfigError


class Busy(Exception):
    """The pool is full; retry_after is a hint in whole seconds."""

    def __init__(self, retry_after):
        super().__init__(f"the service is busy ({retry_after} s)")
        self.retry_after = retry_after


class TimedOut(Exception):
    """The call did not finish within the pool's timeout."""


class WorkerPool:
    def __init__(self, name, workers, queue_size, timeout):
        if workers < 1 or queue_size < 0 or timeout <= 0:
            raise ConfigError(f"{name} pool: workers >= 1, queue >= 0 and timeout > 0 needed, got {workers}, "
                             f"{queue_size}, {timeout}")
        self.name, self.workers, self.timeout = name, workers, timeout
        self.capacity = workers + queue_size
        self._executor = None  # started on first use, again after a shutdown (an app served twice)
        self._admitted = 0
        self._lock = threading.Lock()
        self._seconds_per_call = 0.1  # a running average, for Retry-After

    @property
    def depth(self):
        """Calls admitted and not yet finished (running + waiting)."""
        return self._admitted

    async def run(self, fn, *args):
        """fn(*args) on a worker thread; raises Busy, TimedOut, or whatever fn raised."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy(max(1, math.ceil(self._admitted * self._seconds_per_call / self.workers)))
            self._admitted += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"ernievil2-{self.name}")
            executor = self._executor
        future = executor.submit(self._timed, fn, *args)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            future.cancel()  # frees the place at once if the call has not started yet
            raise TimedOut(f"no answer within {self.timeout:g} s") from None

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - start
            self._seconds_per_call = 0.8 * self._seconds_per_call + 0.2 * elapsed

    def _release(self, _future):
        with self._lock:
            self._admitted -= 1

    def shutdown(self):
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
