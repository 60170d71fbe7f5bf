"""What an index is built from: an `embed` output (`ids`, `embeddings`, `texts`, `provenance`) or run_infer's
`.npz` sidecar (its image embeddings, one per distinct image id), as (ids, vectors, metadata, provenance)."""
import json

import numpy as np

from ..errors import EmbeddingFileError
from ..fileio import has_strings, read_strings


def read_gallery(path):
    """(ids: list of str, vectors: float32 [N, D] L2-normalised, metadata: list or None, provenance: dict)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if has_strings(z, "ids") and "embeddings" in names:
                ids, vectors = read_strings(z, "ids"), z["embeddings"]
                metadata = read_strings(z, "texts") if has_strings(z, "texts") else None
                provenance = json.loads(z["provenance"].item()) if "provenance" in names else {}
            elif "image" in names and has_strings(z, "image_ids"):
                ids, vectors, metadata, provenance = _distinct_images(read_strings(z, "image_ids"), z["image"])
            else:
                raise EmbeddingFileError(f"{path}: neither an embed output (ids, embeddings) nor a run_infer.sh "
                                         f"sidecar (image, image_ids); it has {', '.join(sorted(names))}")
    except (OSError, ValueError) as e:
        if isinstance(e, EmbeddingFileError):
            raise
        raise EmbeddingFileError(f"{path}: not a readable .npz of embeddings ({e})") from None
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids) or not len(ids):
        raise EmbeddingFileError(f"{path}: expected N ids and [N, D] embeddings, got {len(ids)} ids and "
                                 f"{list(vectors.shape)}")
    if len(set(ids)) != len(ids):
        raise EmbeddingFileError(f"{path}: ids are not unique (an index needs one vector per id)")
    bad = ~np.isfinite(vectors).all(1)
    if bad.any():
        raise EmbeddingFileError(f"{path}: row {int(np.argmax(bad)) + 1} contains NaN or infinity")
    return ids, vectors, metadata, provenance


def _distinct_images(image_ids, image):
    """The sidecar repeats an image's embedding on every caption row: keep the first row of each id."""
    seen, keep = set(), []
    for row, image_id in enumerate(str(i) for i in image_ids):
        if image_id not in seen:
            seen.add(image_id)
            keep.append(row)
    ids = [str(image_ids[r]) for r in keep]
    return ids, np.asarray(image)[keep], None, {"source": "run_infer sidecar (image embeddings)"}
