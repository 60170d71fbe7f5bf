"""Turning token ids and pixels into L2-normalised numpy embeddings, with eager Paddle or Paddle Inference."""
import numpy as np

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
    import os

    from paddle.base import core
    n = n or os.cpu_count() or 1
    core.set_num_threads(n)
    return n


def make_encoder(cfg):
    """The encoder an inference config asks for (cfg: the INFER_SCHEMA ConfigNode)."""
    from .inference import resolve_device
    device = resolve_device(cfg.device)
    if device == "cpu":
        set_cpu_threads(cfg.cpu_threads)
    if cfg.engine == "paddle_inference":
        from .export import PredictorEncoder
        return PredictorEncoder(cfg.inference_model_dir, device=device, cpu_threads=cfg.cpu_threads)
    model = build_model(cfg.vision_model, cfg.text_model_config, cfg.init_from_params)
    return EagerEncoder(model)


def l2_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
