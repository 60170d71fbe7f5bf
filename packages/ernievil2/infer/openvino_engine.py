"""`engine: openvino`: the exported towers (their ONNX copies, interop.export) compiled by OpenVINO for the CPU,
with the interface of engines.EagerEncoder.  Optional (`pip install -e ".[openvino]"`).

OpenVINO runs `precision: bf16` on AMX / AVX512-BF16 with its own fused kernels (no conversions between ops,
weights converted once at compile time), `fp32` exactly, and `int8` on AMX-INT8 / AVX512-VNNI with towers quantised
by infer.quantize.  Text widths are rounded up to a multiple of WIDTH_STEP (few input shapes, little padding).
What it compiles is kept beside the export (compiled_cache_dir), and this module never imports Paddle.
"""
import glob
import hashlib
import importlib.util
import json
import os
import shutil

import numpy as np

from .. import runtime
from ..errors import RuntimeSupportError
from ..interop.export import TOWERS, ensure_onnx, read_export_meta
from .fidelity import cpu_signature

WIDTH_STEP = 8
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # int8: what is left in float runs in bf16 if it can


def available():
    return importlib.util.find_spec("openvino") is not None


CACHE_SUBDIR = "openvino_cache"


def compiled_cache_dir(model_dir, model_file, config):
    """Where OpenVINO keeps what it compiled from model_file with `config` on this CPU, so that later starts load it
    instead of compiling again (README: "CPU precision"); None when it cannot be created.  OpenVINO keys its blobs
    by the file's path and not reliably by the precision asked for (measured: a bf16 compile was loaded for fp32),
    so the folder is keyed by the file's size and time, the config and the CPU; a re-exported file's old folders
    are removed."""
    stamps = [f"{st.st_size}:{st.st_mtime_ns}" for st in map(os.stat, _with_weights(model_file))]
    source = _digest(os.path.abspath(model_file))
    version = _digest("|".join(stamps))
    root = os.path.join(model_dir, CACHE_SUBDIR)
    path = os.path.join(root, f"{source}-{version}-{_digest(json.dumps([config, cpu_signature()], sort_keys=True))}")
    try:
        os.makedirs(path, exist_ok=True)
        for old in glob.glob(os.path.join(root, f"{source}-*")):
            if not os.path.basename(old).startswith(f"{source}-{version}-"):
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _digest(text):
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _with_cache(config, model_dir, model_file):
    cache = compiled_cache_dir(model_dir, model_file, config)
    return {**config, "CACHE_DIR": cache} if cache else config


def _with_weights(model_file):
    weights = os.path.splitext(model_file)[0] + ".bin"  # an OpenVINO model's weights beside its .xml
    return [model_file, weights] if model_file.endswith(".xml") and os.path.exists(weights) else [model_file]


class OpenVinoEncoder:
    """Token ids / pixels -> L2-normalised float32 numpy embeddings through OpenVINO's CPU plugin."""

    def __init__(self, model_dir, precision="fp32", cpu_threads=0, towers=TOWERS, image_batch=8, model_files=None,
                 meta=None):
        """model_files: {tower: OpenVINO model path} to run instead of the export's ONNX towers (int8: the models
        of infer.quantize.int8_encoder).  meta: the export's export.json when the caller has read it already."""
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeSupportError("engine openvino needs OpenVINO: pip install -e \".[openvino]\"") from None
        if precision not in PRECISION_HINTS:
            raise RuntimeSupportError(f"engine openvino runs precision fp32, bf16 or int8, not {precision}")
        if precision == "bf16" and not runtime.cpu_has_bf16():
            raise RuntimeSupportError("precision bf16 needs a CPU with AVX512-BF16 or AMX-BF16; this one has neither "
                                      "(use precision fp32)")
        self.meta = meta if meta is not None else read_export_meta(model_dir)
        self.model_dir = model_dir
        self.embed_dim = int(self.meta["embed_dim"])
        self.image_size = int(self.meta["image_size"])
        self.pad_id = int(self.meta.get("pad_token_id", 0))
        self.image_batch = max(1, int(image_batch))
        self.precision = precision
        self.variant = ""
        if precision == "int8" and not model_files:
            raise ValueError("precision int8 runs the quantised models of infer.quantize.int8_encoder")
        files = model_files or ensure_onnx(model_dir, towers)
        if model_files:  # which quantised models (their cache folder): part of the fidelity verdict's key
            self.variant = os.path.basename(os.path.dirname(next(iter(files.values()))))
        hint = PRECISION_HINTS[precision] or ("bf16" if runtime.cpu_has_bf16() else "f32")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(cpu_threads or os.cpu_count() or 1)}
        core = ov.Core()
        self._requests = {tower: core.compile_model(path, "CPU", _with_cache(config, model_dir, path))
                          .create_infer_request() for tower, path in files.items()}

    @property
    def towers(self):
        return tuple(self._requests)

    @property
    def logit_scale(self):
        value = self.meta.get("logit_scale")
        return None if value is None else float(value)

    def _run(self, tower, array):
        if tower not in self._requests:
            raise ValueError(f"this encoder was created without the {tower} tower")
        if array.shape[0] == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.array(self._requests[tower].infer({0: array})[0], dtype=np.float32)

    def encode_text(self, ids):
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"encode_text: expected integer token ids [batch, length], got {ids.dtype} "
                             f"{list(ids.shape)}")
        width = -(-ids.shape[1] // WIDTH_STEP) * WIDTH_STEP
        padded = np.full((len(ids), width), self.pad_id, np.int64)
        padded[:, :ids.shape[1]] = ids
        return self._run("text", padded)

    def encode_image(self, pixels):
        pixels = np.ascontiguousarray(pixels, np.float32)
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"encode_image: expected pixels [batch, 3, {s}, {s}], got {list(pixels.shape)}")
        return np.concatenate([self._run("image", pixels[i:i + self.image_batch])
                               for i in range(0, len(pixels), self.image_batch)] or [self._run("image", pixels)])
