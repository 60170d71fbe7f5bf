"""Turning token ids and pixels into L2-normalised numpy embeddings, with eager Paddle or Paddle Inference."""
import os

from .checkpoint import load_weights
from .model import ErnieViL2, ModelConfig


def build_model(vision="vit_b16", text_config=None, weights=None, strict=True, dropout=None):
    """A dual encoder from a vision preset/dict and an ERNIE config JSON, loaded from `weights` if given."""
    model = ErnieViL2(ModelConfig.build(vision, text_config, dropout=dropout), initialize=not weights)
    if weights:
        load_weights(model, weights, strict=strict)
    return model


class EagerEncoder:
    def __init__(self, model):
        import paddle
        self.paddle = paddle
        self.model = model
        model.eval()

    def encode_text(self, ids):
        with self.paddle.no_grad():
            return self.model.encode_text(self.paddle.to_tensor(ids, dtype="int64"), normalize=True).numpy()

    def encode_image(self, pixels):
        with self.paddle.no_grad():
            return self.model.encode_image(self.paddle.to_tensor(pixels, dtype="float32"), normalize=True).numpy()


def set_cpu_threads(n):
    from paddle.base import core
    n = n or os.cpu_count() or 1
    core.set_num_threads(n)
    return n


def make_encoder(cfg):
    """The encoder an inference config asks for (cfg: the INFER_SCHEMA ConfigNode).

    engine auto: Paddle Inference (oneDNN) on the CPU, where it is about 5x faster than eager, exporting the
    towers once per weights file into a cache; eager on the GPU."""
    from .inference import resolve_device
    device = resolve_device(cfg.device)
    if device == "cpu":
        set_cpu_threads(cfg.cpu_threads)
    engine = cfg.engine
    if engine == "auto":
        engine = "paddle_inference" if device == "cpu" else "eager"
    if cfg.precision != "fp32" and (engine != "paddle_inference" or device != "cpu"):
        raise ValueError(f"precision {cfg.precision} is for engine paddle_inference on the CPU (this run: engine "
                         f"{engine} on {device}); use precision fp32")
    if engine == "paddle_inference":
        from .export import PredictorEncoder
        model_dir = cfg.inference_model_dir or cached_export(cfg)
        return PredictorEncoder(model_dir, device=device, cpu_threads=cfg.cpu_threads, precision=cfg.precision,
                                text_batch=cfg.infer_batch_size, text_max_len=cfg.max_text_seqlen)
    model = build_model(cfg.vision_model, cfg.text_model_config, cfg.init_from_params)
    return EagerEncoder(model)


def export_cache_root():
    return os.environ.get("ERNIEVIL2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ernievil2")


def cached_export(cfg):
    """Export the towers of cfg's model once and reuse them: keyed by the weights file (path, size, mtime)
    and the model configuration."""
    import hashlib
    import json
    import sys

    from .export import export_towers, read_export_meta
    weights = os.path.abspath(cfg.init_from_params)
    st = os.stat(weights)
    with open(cfg.text_model_config, encoding="utf-8") as f:
        text_config = f.read()
    key = json.dumps([weights, st.st_size, st.st_mtime_ns, cfg.vision_model, text_config, cfg.image_size],
                     sort_keys=True, default=str)
    out_dir = os.path.join(export_cache_root(), "exported", hashlib.sha1(key.encode()).hexdigest()[:16])
    try:
        read_export_meta(out_dir)
        return out_dir
    except (OSError, ValueError):
        pass
    print(f"exporting the towers for Paddle Inference into {out_dir} (once per weights file)", file=sys.stderr)
    model = build_model(cfg.vision_model, cfg.text_model_config, weights)
    export_towers(model, out_dir, extra_meta={"source_weights": weights})
    return out_dir
