"""Reading, checking and writing model weights in the official ERNIE-ViL 2.0 key layout (other layouts:
interop.layouts).

Loading is strict by default: every missing key, unexpected key and shape mismatch is named, and nothing is
loaded unless all of them are absent.  `strict=False` loads what matches (for partial fine-tuning) and returns
the same report.  Files are written atomically, so a crash never leaves a truncated checkpoint behind.
"""
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field

import numpy as np
import paddle

from ..errors import CheckpointError
from ..fileio import atomic_write

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (name, file shape, model shape)

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit=20):
        parts = []
        for title, items in (("missing from the file", self.missing), ("unexpected in the file", self.unexpected),
                             ("shape mismatch (file vs model)",
                              [f"{n} {list(a)} vs {list(b)}" for n, a, b in self.mismatched])):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {title}: {shown}")
        return "; ".join(parts) if parts else "all keys match"


def read_raw_state(path):
    """Return {name: numpy array} from a `.pdparams` (Paddle pickle) or `.safetensors` file, keys as stored."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: weights file not found. Point init_from_params at an ERNIE-ViL 2.0 "
                              f"checkpoint (the official ERNIE_VIL2_BASE_ViT.pdparams, or one our trainer wrote).")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a .pdparams or .safetensors file")
    with open(path, "rb") as f:
        magic = f.read(8)
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    else:
        state = _read_pdparams(path, magic)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a checkpoint (expected a non-empty dict of named arrays, "
                              f"found {type(state).__name__})")
    arrays = {}
    for name, value in state.items():
        if hasattr(value, "numpy"):
            value = value.numpy()
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: not a checkpoint (entry {name!r} is a {type(value).__name__}, "
                                  f"expected an array)")
        arrays[name] = value
    return arrays


PICKLE_NOTICE = ("note: .pdparams files are Python pickles; load them only from sources you trust "
                 "(convert with python -m ernievil2 convert --to safetensors IN OUT.safetensors)")
_pickle_notice_shown = False


def _pickle_notice():
    """Logged once per process, before the first `.pdparams` is unpickled."""
    global _pickle_notice_shown
    if not _pickle_notice_shown:
        _pickle_notice_shown = True
        logger.info(PICKLE_NOTICE)


def _read_pdparams(path, magic):
    if not magic:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    # Paddle writes a pickle (starts with the PROTO opcode 0x80) or, for some versions, a zip archive.
    if magic[:1] != b"\x80" and not magic.startswith(b"PK"):
        raise CheckpointError(f"{path}: not a Paddle checkpoint (it does not start like a pickle or zip file)")
    _pickle_notice()
    try:
        return paddle.load(path, return_numpy=True)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, RuntimeError,
            AttributeError, ImportError, IndexError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint; it is truncated or not a Paddle "
                              f"weights file ({type(e).__name__}: {e})") from None


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read this safetensors file; it is truncated or corrupt ({e})") from None


def match_state(model, state):
    """Compare a state dict with a model's parameters and persistable buffers, without loading anything."""
    report = LoadReport()
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.mismatched.append((name, tuple(state[name].shape), tuple(tensor.shape)))
        else:
            report.loaded.append(name)
    report.unexpected = [name for name in state if name not in own]
    return report


def load_weights(model, source, strict=True, path_for_errors=None):
    """Load a path (keys as stored) or a {name: array} dict into `model`.  Strict: every key and shape must match.
    (interop.layouts.read_state reads files of any known layout.)"""
    path = source if isinstance(source, str) else (path_for_errors or "<state dict>")
    state = read_raw_state(source) if isinstance(source, str) else source
    report = match_state(model, state)
    if strict and not report.ok:
        raise CheckpointError(f"{path}: does not fit this model: {report.describe()}. "
                              f"(Use non-strict loading only for deliberate partial fine-tuning.)")
    own = model.state_dict()
    with paddle.no_grad():
        for name in report.loaded:
            own[name].set_value(state[name].astype(_numpy_dtype(own[name])))
    return report


def _numpy_dtype(tensor):
    return {paddle.float32: np.float32, paddle.float16: np.float16, paddle.float64: np.float64,
            paddle.int64: np.int64, paddle.int32: np.int32}.get(tensor.dtype, np.float32)


def state_arrays(model):
    """The model's weights as float32 numpy arrays under their official names."""
    out = {}
    for name, tensor in model.state_dict().items():
        value = tensor.numpy()
        out[name] = value.astype(np.float32) if value.dtype in (np.float16, np.float64) else value
    return out


def save_weights(model_or_state, path):
    """Write weights in the official layout: `.pdparams` (a pickled dict of numpy arrays, exactly what the
    official release loads) or `.safetensors`, chosen by the extension."""
    state = model_or_state if isinstance(model_or_state, dict) else state_arrays(model_or_state)
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        # PaddleNLP's loader requires the "format" entry ("np": numpy arrays) in the header.
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "np"}))
    else:
        atomic_write(path, lambda tmp: paddle.save(state, tmp))
    return path
