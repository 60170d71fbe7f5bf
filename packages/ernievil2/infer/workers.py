"""Worker-process side of the inference pipeline: tokenising texts and decoding + preprocessing images while
the main process runs the model.  Spawned workers import this module (and so the package's `__init__`
files) but never Paddle."""
import multiprocessing

import numpy as np

from ..data.images import decode_base64_image
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import preprocess_eval

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
    st = _WORKER_STATE
    ids = st["tokenizer"].batch_encode(texts, max_len=st["max_len"])
    pixels, errors = [], {}
    size = st["image_size"]
    for i, b64 in enumerate(images):
        try:
            pixels.append(preprocess_eval(decode_base64_image(b64, max_pixels=st["max_pixels"]), size))
        except ValueError as e:
            errors[i] = str(e)
            pixels.append(np.zeros((3, size, size), np.float32))
    pix = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.float32)
    return ids, pix, errors


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
        return multiprocessing.get_context("spawn").Pool(options.num_workers, init_worker, initargs)
    return InlinePool(initargs)
