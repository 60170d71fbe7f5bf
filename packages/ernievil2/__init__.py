"""ERNIE-ViL 2.0 in PaddlePaddle: `model = ernievil2.load(weights, vocab_file=...)`, then
`model.encode_text([...])` / `model.encode_image([...])`.  Submodules load on use: light tools (the evaluator,
worker processes) never import Paddle."""
__version__ = "0.1.0"

import warnings as _warnings

# Paddle warns on import that ccache (a C++ build cache for custom operators) is missing: irrelevant here.
_warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .runtime import limit_image_decoders as _limit_image_decoders  # noqa: E402 (after the warning filter)
from .runtime import tune_math_libraries as _tune_math_libraries  # noqa: E402

# Before Paddle's first matrix product (see runtime): MKL's fast path on AMD CPUs.
_tune_math_libraries()
# Before any module imports cv2, which reads its decoders' pixel limit once (see runtime).
_limit_image_decoders()


def __getattr__(name):
    """`ernievil2.load` and `ernievil2.Model` come from `ernievil2.api`, imported on first use (and Paddle only when
    an engine needs it: the OpenVINO engine does not)."""
    if name in ("load", "Model"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'ernievil2' has no attribute {name!r}")
