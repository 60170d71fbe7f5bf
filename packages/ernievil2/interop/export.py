"""Exporting the two towers for Paddle Inference (and ONNX), and reading an export's description.

`export_towers` traces each tower with `paddle.jit.save` into an inference-model directory:

    OUT/image/model.{json,pdiparams}   pixels float32 [batch, 3, S, S] -> L2-normalised embeddings [batch, D]
    OUT/text/model.{json,pdiparams}    input_ids int64 [batch, length] -> L2-normalised embeddings [batch, D]
    OUT/export.json                    dims, image size, pad id, maximum text length, the model config

Batch size and text length are dynamic.  (Paddle 3 writes the program as `model.json`, older versions as
`model.pdmodel`; both are found.)  `infer.predictor.PredictorEncoder` serves such a directory through
`paddle.inference`.  `python -m ernievil2 export CONFIG` is the command line.
"""
import contextlib
import json
import os
import shutil
import warnings

import numpy as np

from ..errors import ConfigError, ExportError, InferenceModelError
from ..fileio import (
    atomic_write,
    read_json,
    recover_folder,
    remove_stale_temps,
    swap_in_folder,
    temp_path_for,
    write_text_atomic,
)

META_FILE = "export.json"
FORMAT = "ernievil2-inference-model"
FORMAT_VERSION = 1
TOWERS = ("image", "text")
INPUTS = {"image": ("pixels", "float32"), "text": ("input_ids", "int64")}
MIN_COSINE = 0.99999  # exported vs eager, the bar the project holds every engine to


# ---------------------------------------------------------------- export

def _tower_layers():
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ImageTower(nn.Layer):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, pixels):
            return F.normalize(self.visual(pixels), axis=-1)

    class TextTower(nn.Layer):
        def __init__(self, text_model):
            super().__init__()
            self.text_model = text_model

        def forward(self, input_ids):
            return F.normalize(self.text_model(input_ids), axis=-1)

    return ImageTower, TextTower


def export_towers(model, out_dir, image_size=None, towers=TOWERS, extra_meta=None):
    """jit.save the towers of an ErnieViL2 `model` into `out_dir` (replaced as a whole, never left half-written).
    image_size defaults to the model's; the positional embeddings fix it, so any other value is an error.
    Returns the export metadata (also written to out_dir/export.json)."""
    import paddle
    from paddle.static import InputSpec

    cfg = model.config
    size = int(image_size or cfg.vision.image_size)
    if size != cfg.vision.image_size:
        raise ConfigError(f"image_size {size} differs from the model's {cfg.vision.image_size} (its positional "
                         f"embeddings are sized for {cfg.vision.image_size})")
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise ConfigError(f"towers: expected some of {', '.join(TOWERS)}, got {list(towers)}")
    _check_replaceable(out_dir)
    ImageTower, TextTower = _tower_layers()
    specs = {"image": (ImageTower(model.visual), [None, 3, size, size]),
             "text": (TextTower(model.text_model), [None, None])}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "embed_dim": model.embed_dim,
            "image_size": size, "pad_token_id": cfg.text.pad_token_id,
            "max_text_len": cfg.text.max_position_embeddings, "vocab_size": cfg.text.vocab_size,
            "normalized": True, "paddle_version": paddle.__version__, "towers": {},
            "logit_scale": float(model.logit_scale().item()),
            "model_config": {"vision": cfg.vision.to_dict(), "text": cfg.text.to_dict()}}
    meta.update(extra_meta or {})
    was_training = model.training
    model.eval()
    try:
        with staging_dir(out_dir) as stage:
            for tower in towers:
                layer, shape = specs[tower]
                name, dtype = INPUTS[tower]
                layer.eval()
                static = paddle.jit.to_static(layer, input_spec=[InputSpec(shape, dtype, name)], full_graph=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # PIR tracing warns about tensor attributes it cannot know
                    try:
                        paddle.jit.save(static, os.path.join(stage, tower, "model"))
                    except Exception as e:  # dy2static raises many kinds; say which tower, keep the cause
                        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                        raise ExportError(f"{out_dir}: paddle.jit.save of the {tower} tower failed: "
                                           f"{lines[-1] if lines else type(e).__name__}") from e
                program = _program_file(os.path.join(stage, tower))
                meta["towers"][tower] = {
                    "model_file": f"{tower}/{program}", "params_file": f"{tower}/model.pdiparams",
                    "input": {"name": name, "dtype": dtype, "shape": [-1 if d is None else d for d in shape]},
                    "output_dim": model.embed_dim}
            _write_meta(stage, meta)
    finally:
        if was_training:
            model.train()
    return meta


def _program_file(tower_dir):
    for name in ("model.json", "model.pdmodel"):
        if os.path.isfile(os.path.join(tower_dir, name)):
            return name
    raise ExportError(f"{tower_dir}: paddle.jit.save wrote no model.json or model.pdmodel")


def _write_meta(directory, meta):
    write_text_atomic(os.path.join(directory, META_FILE), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _check_replaceable(out_dir, meta_file=META_FILE):
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ConfigError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, meta_file)):
            raise ConfigError(f"{out_dir}: exists and is not an exported ERNIE-ViL 2.0 model (no {meta_file}); "
                             f"refusing to replace it. Choose an empty or new directory.")


@contextlib.contextmanager
def staging_dir(out_dir, meta_file=META_FILE):
    """Build an export in a sibling directory, then swap it in: readers see the old export or the new one.
    A non-empty out_dir without `meta_file` (not an export) is never replaced."""
    _check_replaceable(out_dir, meta_file)
    out_dir = os.path.abspath(out_dir)
    recover_folder(out_dir)  # an export that crashed between the two renames of its swap
    remove_stale_temps(out_dir)  # what exports killed half-way left behind
    stage = temp_path_for(out_dir, ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        yield stage
        _check_replaceable(out_dir, meta_file)
        swap_in_folder(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- Paddle Inference

def read_export_meta(model_dir):
    """export.json of an inference-model directory, checked; InferenceModelError naming the problem."""
    hint = "Export the towers first: python -m ernievil2 export CONFIG -o inference_model_dir=DIR"
    if not model_dir:
        raise InferenceModelError(f"inference_model_dir is not set. {hint}")
    recover_folder(model_dir)  # an export that crashed between the two renames of its swap left the old one aside
    if not os.path.isdir(model_dir):
        raise InferenceModelError(f"{model_dir}: inference model directory not found. {hint}")
    path = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(path):
        raise InferenceModelError(f"{model_dir}: not an exported ERNIE-ViL 2.0 model ({META_FILE} missing). {hint}")
    meta = read_json(path, InferenceModelError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InferenceModelError(f"{path}: not an ERNIE-ViL 2.0 export description (format is not {FORMAT!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InferenceModelError(f"{path}: written by a newer version (format_version {meta['format_version']}, "
                                  f"this code reads {FORMAT_VERSION})")
    for key in ("embed_dim", "image_size", "max_text_len", "towers"):
        if key not in meta:
            raise InferenceModelError(f"{path}: '{key}' is missing")
    return meta


# ---------------------------------------------------------------- ONNX

def export_onnx(model_dir, opset=17, towers=None):
    """Convert the exported towers with paddle2onnx into <tower>/model.onnx; returns the written paths.
    Raises ImportError when paddle2onnx is not installed."""
    import paddle2onnx
    meta = read_export_meta(model_dir)
    written = {}
    for tower in towers or list(meta["towers"]):
        info = meta["towers"][tower]
        target = os.path.join(model_dir, tower, "model.onnx")

        def convert(tmp, info=info):
            paddle2onnx.export(os.path.join(model_dir, info["model_file"]),
                               os.path.join(model_dir, info["params_file"]), tmp, opset_version=opset,
                               enable_onnx_checker=True, enable_optimize=False,
                               # The default optimizer (polygraphy) sets POLYGRAPHY_AUTOINSTALL_DEPS and pip-installs
                               # packages into the running environment (it upgraded numpy past our pin): never.
                               optimize_tool="none")
        atomic_write(target, convert)
        info["onnx_file"] = f"{tower}/model.onnx"
        written[tower] = target
    meta["onnx_opset"] = opset
    _write_meta(model_dir, meta)
    return written


def ensure_onnx(model_dir, towers=TOWERS):
    """{tower: path of its model.onnx}, converting (once) the towers that have none yet."""
    meta = read_export_meta(model_dir)
    missing = [t for t in towers if not os.path.isfile(os.path.join(model_dir, t, "model.onnx"))]
    if missing:
        try:
            export_onnx(model_dir, towers=missing)
        except ImportError:
            raise ExportError("paddle2onnx is needed to run the towers outside Paddle: "
                              "pip install paddle2onnx") from None
        meta = read_export_meta(model_dir)
    return {t: os.path.join(model_dir, t, "model.onnx") for t in towers if t in meta["towers"]}


# ---------------------------------------------------------------- checks and the command line

def compare_with_eager(model, encoder, batch=2, text_len=12, seed=0):
    """Per tower, on random inputs: the smallest cosine between eager and exported embeddings, and the largest
    distance of an exported embedding's norm from 1 (the export must be L2-normalised)."""
    import paddle
    rng = np.random.default_rng(seed)
    cfg = model.config
    inputs = {}
    if "image" in encoder.towers:
        s = cfg.vision.image_size
        inputs["image"] = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    if "text" in encoder.towers:
        length = min(text_len, cfg.text.max_position_embeddings)
        ids = rng.integers(4, cfg.text.vocab_size, (batch, length)).astype(np.int64)
        ids[:, 0] = 1
        ids[0, max(2, length // 2):] = cfg.text.pad_token_id  # one padded text
        inputs["text"] = ids
    results = {}
    model.eval()
    for tower, array in inputs.items():
        with paddle.no_grad():
            ref = getattr(model, f"encode_{tower}")(paddle.to_tensor(array), normalize=True).numpy()
        got = getattr(encoder, f"encode_{tower}")(array)
        norms = np.linalg.norm(got, axis=-1)
        cosine = (ref * got).sum(-1) / np.maximum(norms * np.linalg.norm(ref, axis=-1), 1e-12)
        results[tower] = {"cosine": float(cosine.min()), "norm_error": float(np.abs(norms - 1).max())}
    return results
