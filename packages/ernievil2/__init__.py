"""ERNIE-ViL 2.0 in PaddlePaddle: dual-encoder model, tokenizer, data, losses, trainer, inference, evaluation.

Submodules are imported on use so that light tools (the evaluator) do not pay for importing Paddle.
"""
__version__ = "0.1.0"

import warnings as _warnings

# Paddle warns on import that ccache (a C++ build cache for custom operators) is missing: irrelevant here.
_warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .runtime import tune_math_libraries as _tune_math_libraries

# Before Paddle's first matrix product (see runtime): MKL's fast path on AMD CPUs.
_tune_math_libraries()
