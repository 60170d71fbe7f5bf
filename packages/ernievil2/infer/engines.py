"""Engines: token ids and pixels -> L2-normalised numpy embeddings, with eager Paddle (`EagerEncoder`) or
Paddle Inference (`predictor.PredictorEncoder`), and the choice between them (`make_encoder`)."""
import hashlib
import json
import os
import sys

from ..errors import ConfigError, InputError
from ..interop.convert import load_any_layout
from ..interop.export import export_towers, read_export_meta
from ..model.dual_encoder import build_model
from ..runtime import resolve_device, set_cpu_threads
from .options import WEIGHTS_HELP


class EagerEncoder:
    """A dual encoder run eagerly (no export); the trainer's dev evaluation uses its live model this way."""

    def __init__(self, model):
        import paddle
        self.paddle = paddle
        self.model = model
        model.eval()

    @property
    def embed_dim(self):
        return self.model.embed_dim

    @property
    def logit_scale(self):
        """exp(t) of the model's temperature: zero-shot scores are cosine x this."""
        return float(self.model.logit_scale().item())

    def encode_text(self, ids):
        with self.paddle.no_grad():
            return self.model.encode_text(self.paddle.to_tensor(ids, dtype="int64"), normalize=True).numpy()

    def encode_image(self, pixels):
        with self.paddle.no_grad():
            return self.model.encode_image(self.paddle.to_tensor(pixels, dtype="float32"), normalize=True).numpy()


def load_model(options):
    """The eager dual encoder of EngineOptions, with its weights (any known layout) loaded."""
    model = build_model(options.vision_model, options.text_model_config, initialize=not options.weights)
    if options.weights:
        load_any_layout(model, options.weights)
    return model


def make_encoder(options):
    """The encoder EngineOptions ask for.

    engine auto: Paddle Inference (oneDNN) on the CPU, where it is faster than eager (README: "Measured
    results"), exporting the towers once per weights file into a cache; eager on the GPU."""
    device = resolve_device(options.device)
    if device == "cpu":
        set_cpu_threads(options.cpu_threads)
    engine = options.engine
    if engine == "auto":
        engine = "paddle_inference" if device == "cpu" else "eager"
    if options.precision != "fp32" and (engine != "paddle_inference" or device != "cpu"):
        raise ConfigError(f"precision {options.precision} is for engine paddle_inference on the CPU (this run: "
                          f"engine {engine} on {device}); use precision fp32")
    needs_weights = engine == "eager" or not options.inference_model_dir
    if needs_weights and not (options.weights and os.path.isfile(options.weights)):
        raise InputError(f"init_from_params: file not found: {options.weights}. {WEIGHTS_HELP}")
    if engine == "paddle_inference":
        from .predictor import PredictorEncoder
        model_dir = options.inference_model_dir or cached_export(options)
        return PredictorEncoder(model_dir, device=device, cpu_threads=options.cpu_threads,
                                precision=options.precision, text_batch=options.text_batch,
                                text_max_len=options.max_text_len)
    return EagerEncoder(load_model(options))


EXPORT_CACHE_VERSION = 2  # bumped when exports gain something older ones lack (2: the logit scale)


def export_cache_root():
    return os.environ.get("ERNIEVIL2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ernievil2")


def cached_export(options):
    """Export the towers of the options' model once and reuse them: keyed by the weights file (path, size,
    mtime) and the model configuration."""
    weights = os.path.abspath(options.weights)
    st = os.stat(weights)
    text_config = None
    if options.text_model_config:
        with open(options.text_model_config, encoding="utf-8") as f:
            text_config = f.read()
    key = json.dumps([EXPORT_CACHE_VERSION, weights, st.st_size, st.st_mtime_ns, options.vision_model, text_config,
                      options.image_size], sort_keys=True, default=str)
    out_dir = os.path.join(export_cache_root(), "exported", hashlib.sha1(key.encode()).hexdigest()[:16])
    try:
        read_export_meta(out_dir)
        return out_dir
    except (OSError, ValueError):
        pass
    print(f"exporting the towers for Paddle Inference into {out_dir} (once per weights file)", file=sys.stderr)
    model = load_model(options)
    export_towers(model, out_dir, extra_meta={"source_weights": weights})
    return out_dir
