"""The Python API: `ernievil2.load(...)` returns a `Model` with `encode_text`, `encode_image`, `tokenize`,
`preprocess` and zero-shot `classify`, on the same tokenizer, preprocessing and engines as run_infer.sh."""
from .model import Model, load

__all__ = ["Model", "load"]
