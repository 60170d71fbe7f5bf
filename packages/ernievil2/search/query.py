"""Querying an index with a text or an image, embedded by the model that built the gallery."""
from ..errors import ConfigError


def search(model, index, text=None, image=None, k=10):
    """Top-k of `index` (a SearchIndex) for one text or one image (path, bytes or RGB array) embedded by
    `model` (an ernievil2.api.Model): a list of {"id", "score", "metadata"}, best first, ties by ascending id."""
    if (text is None) == (image is None):
        raise ConfigError("give a text or an image to search with (not both)")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the text query is empty")
        vector = model.encode_text([text])
    else:
        vector = model.encode_image([image])
    hits = index.search(vector, k)[0]
    return [{"id": hit_id, "score": round(score, 6), "metadata": metadata} for hit_id, score, metadata in hits]
