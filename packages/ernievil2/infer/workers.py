"""Worker-process side of the inference pipeline: tokenising texts and decoding + preprocessing images while
the main process runs the model.  Spawned workers import this module (and so the package's `__init__`
files) but never Paddle."""
import collections
import multiprocessing

import numpy as np

from ..data.images import decode_base64_image, decode_image
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import preprocess_eval
from ..runtime import die_with_parent

_WORKER_STATE = {}


def init_worker(vocab_file, max_len, image_size, max_pixels):
    import cv2
    cv2.setNumThreads(1)  # the workers are the parallelism; nested threads would only contend
    _WORKER_STATE.update(tokenizer=ErnieTokenizer.from_file(vocab_file), max_len=max_len,
                         image_size=image_size, max_pixels=max_pixels)


def prepare_batch(job):
    """job: (texts, images) where images is a list of base64 strings to decode (new images only).
    Returns (token ids [B, L] padded to the longest, pixels [n, 3, S, S], {image index: error reason})."""
    texts, images = job
    st = _state()
    ids = st["tokenizer"].batch_encode(texts, max_len=st["max_len"])
    return (ids,) + prepare_images([(None, b64) for b64 in images])


def prepare_images(sources):
    """sources: [(file path, None) or (None, base64)] -> (pixels [n, 3, S, S], {index: error reason}); a bad
    image gets zeros and its reason."""
    st = _state()
    size = st["image_size"]
    pixels, errors = np.zeros((len(sources), 3, size, size), np.float32), {}
    for i, (path, b64) in enumerate(sources):
        try:
            rgb = _read_image(path, st["max_pixels"]) if path else decode_base64_image(b64, st["max_pixels"])
            pixels[i] = preprocess_eval(rgb, size)
        except ValueError as e:
            errors[i] = str(e)
    return pixels, errors


def prepare_texts(texts):
    """Token ids [B, L] of texts, padded to the longest."""
    st = _state()
    return st["tokenizer"].batch_encode(texts, max_len=st["max_len"])


def _read_image(path, max_pixels):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from None
    return decode_image(data, max_pixels=max_pixels)


class InlinePool:
    """Stand-in for a process pool when num_workers is 0 (debugging, tiny inputs)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def __init__(self, initargs):
        init_worker(*initargs)

    def apply_async(self, fn, args):
        return self._Done(fn(*args))

    def terminate(self):
        pass

    def join(self):
        pass


def start_pool(options):
    """A spawn pool of `options.num_workers` processes (an inline stand-in for 0) prepared with init_worker."""
    initargs = (options.vocab_file, options.max_text_len, options.image_size, options.max_image_pixels)
    if options.num_workers > 0:
        return multiprocessing.get_context("spawn").Pool(options.num_workers, _init_pool_worker, initargs)
    return InlinePool(initargs)


def _init_pool_worker(*initargs):
    # A pool replaces a worker whose initializer raises, forever: the run would hang.  The error is kept instead
    # and raised by the worker's first job, so that it reaches the rank through the job's result.
    try:
        die_with_parent()  # a worker process ends with its rank, whatever kills the rank
        init_worker(*initargs)
    except Exception as e:  # noqa: BLE001 - any failure must reach the rank, not loop
        _WORKER_STATE["init_error"] = e


def _state():
    if "init_error" in _WORKER_STATE:
        raise _WORKER_STATE["init_error"]
    return _WORKER_STATE


def prefetched(pool, fn, work, depth):
    """For each (context, job) of `work`, run fn(job) in the pool up to `depth` jobs ahead of the consumer;
    yield (context, result) in order."""
    pending = collections.deque()
    for context, job in work:
        pending.append((context, pool.apply_async(fn, (job,))))
        if len(pending) >= depth:
            done, result = pending.popleft()
            yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()
