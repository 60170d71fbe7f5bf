"""The `.npz` sidecar: a binary copy of an embedding file's rows (`text` float32 [N, D], `image` float32 [N, D],
`image_ids` unicode [N]), written by run_infer.sh beside its text output, plus the text file's size and CRC-32
so that eval_retri.py may read this copy instead of parsing (only while both still match)."""
import os
import zipfile
import zlib

import numpy as np

from ..errors import EmbeddingFileError
from ..fileio import NpzWriter, has_strings, read_strings

TEXT_FILE_CHECK = "text_file_check"  # sidecar array: [byte size, CRC-32] of the text file it is a copy of


def sidecar_path_for(text_path):
    """Where run_infer.sh puts the binary copy of an embedding text file: `out.embeddings` -> `out.npz`."""
    return os.path.splitext(text_path)[0] + ".npz"


def text_file_check(path, chunk=1 << 24):
    """[byte size, CRC-32] of a file (CRC-32 runs at several GB/s, far faster than parsing the text)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            crc, size = zlib.crc32(block, crc), size + len(block)
    return np.array([size, crc], np.int64)


def matching_sidecar(text_path):
    """The sidecar beside `text_path` if it certifiably holds the same rows, else None.

    A sidecar qualifies only when it records the size and CRC-32 of the text file it was written with and both
    still match the file now (an edited, truncated or regenerated text file never reuses a stale copy).  The
    float32 values are identical either way: the text holds str() of each float32, which reads back exactly.
    """
    side = sidecar_path_for(text_path)
    if os.path.abspath(side) == os.path.abspath(text_path) or not os.path.isfile(side):
        return None
    try:
        with np.load(side, allow_pickle=False) as z:
            if TEXT_FILE_CHECK not in z.files:
                return None
            recorded = np.asarray(z[TEXT_FILE_CHECK])
        if recorded.shape != (2,) or int(recorded[0]) != os.path.getsize(text_path):
            return None
        return side if np.array_equal(text_file_check(text_path), recorded) else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None  # an unreadable sidecar is simply not used; the text file is parsed


def sidecar_writer(path):
    """A streaming writer of a sidecar's rows: `.add(text=[n, D], image=[n, D], image_ids=[n])`, then
    `.finish(extra={TEXT_FILE_CHECK: [size, crc]})` or `.finish()`."""
    return NpzWriter(path, matrices=("text", "image"), strings=("image_ids",))


def save_sidecar(path, text, image, image_ids, text_file=None):
    """Write a sidecar of in-memory arrays atomically.  With `text_file`, record its size and CRC-32 so that
    eval_retri.py may read this copy in its place."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    ids = [str(i) for i in image_ids]
    if text.ndim != 2 or image.shape != text.shape or len(ids) != text.shape[0]:
        raise ValueError(f"sidecar needs text and image of one shape [N, D] and N image ids; got text "
                         f"{text.shape}, image {image.shape}, {len(ids)} ids")
    writer = sidecar_writer(path)
    try:
        writer.add(text=text, image=image, image_ids=ids)
        writer.finish(extra={TEXT_FILE_CHECK: text_file_check(text_file)} if text_file else None)
    finally:
        writer.cleanup()
    return path


def load_sidecar(path):
    """(text, image, image_ids) of a sidecar, checked; EmbeddingFileError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"text", "image"} - set(z.files)) + ([] if has_strings(z, "image_ids") else ["image_ids"])
            if missing:
                raise EmbeddingFileError(f"{path}: sidecar lacks array(s) {', '.join(missing)} "
                                         f"(expected text, image, image_ids)")
            text, image, ids = z["text"], z["image"], np.asarray(read_strings(z, "image_ids"), dtype=str)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, EmbeddingFileError):
            raise
        raise EmbeddingFileError(f"{path}: not a readable .npz sidecar: {e}") from None
    where = f"{path}:"
    if text.ndim != 2 or text.dtype.kind != "f":
        raise EmbeddingFileError(f"{where} text must be a float [N, D] array, got {text.dtype} {text.shape}")
    if image.ndim != 2 or image.dtype.kind != "f":
        raise EmbeddingFileError(f"{where} image must be a float [N, D] array, got {image.dtype} {image.shape}")
    if len(text) == 0:
        raise EmbeddingFileError(f"{where} empty sidecar: no embedding rows")
    if len(image) != len(text) or ids.shape != (len(text),):
        raise EmbeddingFileError(f"{where} row counts differ: text {len(text)}, image {len(image)}, "
                                 f"image_ids {ids.shape}")
    if image.shape[1] != text.shape[1]:
        raise EmbeddingFileError(f"{where} embeddings of different dimensions: text {text.shape[1]}, "
                                 f"image {image.shape[1]}")
    if text.shape[1] == 0:
        raise EmbeddingFileError(f"{where} embeddings have dimension 0")
    text, image = text.astype(np.float32, copy=False), image.astype(np.float32, copy=False)
    for name, arr in (("text", text), ("image", image)):
        bad = ~np.isfinite(arr).all(1)
        if bad.any():
            raise EmbeddingFileError(f"{where} row {int(np.argmax(bad)) + 1}: {name} embedding contains NaN or "
                                     f"infinity")
    if ids.dtype.kind != "U":
        ids = ids.astype(str)
    return text, image, ids
