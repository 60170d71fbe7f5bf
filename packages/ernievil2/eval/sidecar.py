"""The `.npz` sidecar: a binary copy of an embedding file's rows (`text` float32 [N, D], `image` float32 [N, D],
`image_ids` unicode [N]), written by run_infer.sh beside its text output, plus the text file's size and CRC-32
so that eval_retri.py may read this copy instead of parsing (only while both still match)."""
import os
import zipfile
import zlib

import numpy as np

from ..errors import EmbeddingFileError
from ..fileio import atomic_path, temp_path_for

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


class SidecarWriter:
    """Streams rows into an `.npz` (text [N, D], image [N, D], image_ids [N]) without holding them in memory:
    rows go to raw temporary files, and `finish` copies them into the zip behind .npy headers."""

    def __init__(self, path):
        self.path = path
        base = temp_path_for(path)  # hidden, beside the final file; removed by finish() or cleanup()
        self.parts = {name: f"{base}.{name}" for name in ("text", "image", "ids")}
        self.files = {name: open(p, "wb") for name, p in self.parts.items()}
        self.rows = 0
        self.dim = None
        self.id_len = 1

    def add(self, text_emb, image_emb, image_id):
        """One row: text [D], image [D], its image id."""
        self.add_rows(np.asarray(text_emb)[None], np.asarray(image_emb)[None], [image_id])

    def add_rows(self, text, image, image_ids):
        """Rows: text [n, D], image [n, D] and n image ids."""
        self.dim = text.shape[-1]
        self.files["text"].write(np.ascontiguousarray(text, np.float32).tobytes())
        self.files["image"].write(np.ascontiguousarray(image, np.float32).tobytes())
        for image_id in image_ids:
            encoded = image_id.encode("utf-8")
            self.files["ids"].write(len(encoded).to_bytes(4, "little") + encoded)
            self.id_len = max(self.id_len, len(image_id))
        self.rows += len(image_ids)

    def finish(self, text_check=None):
        """Assemble the .npz; with `text_check` ([byte size, CRC-32] of the finished text output) also record it,
        which lets eval_retri.py read this binary copy instead of parsing that file."""
        for f in self.files.values():
            f.close()
        with atomic_path(self.path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name in ("text", "image"):
                    self._write_npy(zf, name, "<f4", (self.rows, self.dim or 0), self._copy(self.parts[name]))
                self._write_npy(zf, "image_ids", f"<U{self.id_len}", (self.rows,), self._ids())
                if text_check is not None:
                    check = np.asarray(text_check, dtype="<i8")
                    self._write_npy(zf, TEXT_FILE_CHECK, "<i8", (2,), [check.tobytes()])
        self.cleanup()

    def cleanup(self):
        for name, p in self.parts.items():
            self.files[name].close()
            if os.path.exists(p):
                os.remove(p)

    @staticmethod
    def _write_npy(zf, name, descr, shape, chunks):
        with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
            for chunk in chunks:
                out.write(chunk)

    @staticmethod
    def _copy(path, chunk=1 << 22):
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    return
                yield block

    def _ids(self, per_chunk=4096):
        with open(self.parts["ids"], "rb") as f:
            batch = []
            while True:
                head = f.read(4)
                if head:
                    batch.append(f.read(int.from_bytes(head, "little")).decode("utf-8"))
                if len(batch) == per_chunk or (not head and batch):
                    yield np.array(batch, dtype=f"<U{self.id_len}").tobytes()
                    batch = []
                if not head:
                    return




def save_sidecar(path, text, image, image_ids, text_file=None):
    """Write a sidecar of in-memory arrays atomically.  With `text_file`, record its size and CRC-32 so that
    eval_retri.py may read this copy in its place."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    ids = [str(i) for i in image_ids]
    if text.ndim != 2 or image.shape != text.shape or len(ids) != text.shape[0]:
        raise ValueError(f"sidecar needs text and image of one shape [N, D] and N image ids; got text "
                         f"{text.shape}, image {image.shape}, {len(ids)} ids")
    writer = SidecarWriter(path)
    try:
        writer.add_rows(text, image, ids)
        writer.finish(text_check=text_file_check(text_file) if text_file else None)
    finally:
        writer.cleanup()
    return path


def load_sidecar(path):
    """(text, image, image_ids) of a sidecar, checked; EmbeddingFileError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"text", "image", "image_ids"} - set(z.files))
            if missing:
                raise EmbeddingFileError(f"{path}: sidecar lacks array(s) {', '.join(missing)} "
                                         f"(expected text, image, image_ids)")
            text, image, ids = z["text"], z["image"], z["image_ids"]
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
