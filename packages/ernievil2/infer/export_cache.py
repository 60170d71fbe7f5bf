"""The eager model of EngineOptions (`load_model`) and its towers exported once per weights file into the cache
(`cached_export`), for the engines that run exports."""
import hashlib
import json
import logging
import os

from .. import runtime
from ..fileio import cache_home, exclusive
from ..interop.export import ensure_onnx, export_towers, read_export_meta

logger = logging.getLogger(__name__)

EXPORT_CACHE_VERSION = 2  # bumped when exports gain something older ones lack (2: the logit scale)


def load_model(options):
    """The eager dual encoder of EngineOptions, with its weights (any known layout) loaded."""
    from ..interop.convert import load_any_layout  # these import Paddle, which the OpenVINO engine never needs
    from ..model.dual_encoder import build_model
    model = build_model(options.vision_model, options.text_model_config, initialize=not options.weights)
    if options.weights:
        load_any_layout(model, options.weights)
    return model


def prepare_paddle(device, cpu_threads):
    """Apply a resolved device and the CPU threads to Paddle, only when Paddle runs: importing it is ~3 s of an
    OpenVINO start."""
    runtime.resolve_device(device, warn=False)  # (device is already resolved: this only sets it)
    if device == "cpu":
        runtime.set_cpu_threads(cpu_threads)


def cached_export(options, device, onnx=False):
    """Export the towers of the options' model once and reuse them: keyed by the weights file (path, size, mtime)
    and the model configuration."""
    weights = os.path.abspath(options.weights)
    st = os.stat(weights)
    text_config = None
    if options.text_model_config:
        with open(options.text_model_config, encoding="utf-8") as f:
            text_config = f.read()
    key = json.dumps([EXPORT_CACHE_VERSION, weights, st.st_size, st.st_mtime_ns, options.vision_model, text_config,
                      options.image_size], sort_keys=True, default=str)
    out_dir = os.path.join(cache_home(), "exported", hashlib.sha1(key.encode()).hexdigest()[:16])
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    # One process exports (and converts to ONNX) at a time: the ranks of a run share this folder, and a second
    # export swapped in while the first process writes its ONNX copies would remove them.
    with exclusive(out_dir + ".lock"):
        try:
            read_export_meta(out_dir)
        except (OSError, ValueError):
            logger.warning("exporting the towers for Paddle Inference into %s (once per weights file)", out_dir)
            prepare_paddle(device, options.cpu_threads)
            export_towers(load_model(options), out_dir, extra_meta={"source_weights": weights})
        if onnx:
            ensure_onnx(out_dir)
    return out_dir
