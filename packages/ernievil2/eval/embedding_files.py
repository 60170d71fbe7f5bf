"""Embedding files for the evaluator: the official 3-column text format (`text_format`, fast exact parsing)
and our .npz sidecar (`sidecar`).  Imports only numpy.

Inputs (`load_embeddings` detects the format from the file's first bytes, not its name)
  * text: one row per line, ``text_emb \\t image_emb \\t image_id``, each embedding space-separated floats (the
    file the official run_infer.py writes, with the constant ``1`` as id, and the one ours writes);
  * sidecar: an ``.npz`` (a zip, so it starts with ``PK``) holding ``text`` float32 [N, D], ``image`` float32
    [N, D] (per row: a repeated image repeats) and ``image_ids`` unicode [N]; `save_sidecar` writes one.
    run_infer.sh writes both, and its sidecar records the text file's size and CRC-32: `eval_retri.py out.txt`
    then reads `out.npz` instead of parsing (`matching_sidecar`; only while both still match).
"""
from ..errors import EmbeddingFileError
from .sidecar import load_sidecar
from .text_format import load_text

_SIDECAR_MAGIC = b"PK"


def load_embeddings(path):
    """Read an embedding file (official 3-column text or our .npz sidecar; detected by content).

    Returns (text float32 [N, D], image float32 [N, D], image_ids unicode [N]).  Raises EmbeddingFileError
    naming the file and line (wrong column count, mismatched dimensions, unparsable values, NaN/inf, empty).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_SIDECAR_MAGIC))
    except OSError as e:
        raise EmbeddingFileError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic == _SIDECAR_MAGIC:
        return load_sidecar(path)
    return load_text(path)
