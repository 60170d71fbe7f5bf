"""The ERNIE-ViL 2.0 dual encoder: an image tower, a text tower and the learnable contrastive temperature.

Top-level names match the official checkpoint: `visual.*`, `text_model.*`, `contrastive_loss_mm.temperature_b`.
Both towers emit un-normalised embeddings of the same width (no projection heads, as released).
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ConfigError
from .configs import INIT_SCHEMES, INITIAL_TEMPERATURE, ModelConfig
from .text import ErnieTextModel
from .vision import VisionTransformer


class ContrastiveHead(nn.Layer):
    """Holds the log logit scale.  The loss (train.losses) uses it; the name mirrors the official file."""

    def __init__(self):
        super().__init__()
        self.temperature_b = self.create_parameter(
            [1], default_initializer=nn.initializer.Constant(INITIAL_TEMPERATURE))


class ErnieViL2(nn.Layer):
    def __init__(self, config: ModelConfig = None, initialize=True, init_scheme="normal"):
        """initialize=False skips the from-scratch initialisation (seconds for Base) when weights are loaded next;
        init_scheme: see initialize_weights."""
        super().__init__()
        self.config = config or ModelConfig()
        self.visual = VisionTransformer(self.config.vision)
        self.text_model = ErnieTextModel(self.config.text)
        self.contrastive_loss_mm = ContrastiveHead()
        if initialize:
            initialize_weights(self, init_scheme)

    @property
    def embed_dim(self):
        return self.config.text.hidden_size

    @property
    def temperature(self):
        return self.contrastive_loss_mm.temperature_b

    def logit_scale(self):
        return paddle.exp(self.temperature)

    def encode_image(self, pixels, normalize=False):
        """pixels: float [B, 3, H, W], preprocessed.  Returns [B, D]."""
        emb = self.visual(pixels)
        return F.normalize(emb, axis=-1) if normalize else emb

    def encode_text(self, input_ids, normalize=False):
        """input_ids: int64 [B, L] starting with [CLS], padded with the pad id.  Returns [B, D]."""
        emb = self.text_model(input_ids)
        return F.normalize(emb, axis=-1) if normalize else emb

    def forward(self, pixels, input_ids):
        """Normalised image and text embeddings and the logit scale, the inputs of a contrastive loss."""
        return self.encode_image(pixels, True), self.encode_text(input_ids, True), self.logit_scale()

    def set_recompute(self, enabled=True):
        self.visual.recompute = enabled
        self.text_model.recompute = enabled


def initialize_weights(model, scheme="normal"):
    """Initialisation for training from scratch (a checkpoint load overwrites all of it).

    normal: BERT/ERNIE's, every linear and embedding weight from N(0, 0.02^2) (`initializer_range`).  fan_in: a
    linear layer's weights from N(0, 1 / fan_in) (LeCun's), embeddings as in normal.  The two agree in scale
    near Base's width (768: std 0.036); a narrow tower (width 64: std 0.125) needs fan_in, or its blocks start
    so close to the identity that every input gets nearly the same embedding and training idles at chance.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init scheme {scheme!r} is not one of {', '.join(INIT_SCHEMES)}")
    with paddle.no_grad():
        for layer in model.sublayers():
            if isinstance(layer, nn.Linear):
                fan_in = layer.weight.shape[0]  # Paddle's Linear weight is [in, out]
                std = fan_in ** -0.5 if scheme == "fan_in" else 0.02
                layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape))
                if layer.bias is not None:
                    layer.bias.set_value(paddle.zeros(layer.bias.shape))
            elif isinstance(layer, nn.Embedding):
                layer.weight.set_value(paddle.normal(0.0, 0.02, layer.weight.shape))
            elif isinstance(layer, nn.LayerNorm):
                layer.weight.set_value(paddle.ones(layer.weight.shape))
                layer.bias.set_value(paddle.zeros(layer.bias.shape))
            elif isinstance(layer, nn.Conv2D):
                fan_in = int(math.prod(layer.weight.shape[1:]))
                layer.weight.set_value(paddle.normal(0.0, fan_in ** -0.5, layer.weight.shape))


def build_model(vision="vit_b16", text_config=None, dropout=None, initialize=True):
    """A dual encoder from a vision preset/dict and an ERNIE config (JSON path, dict or None for Base).
    initialize=False when weights are loaded next (skips seconds of random initialisation for Base)."""
    return ErnieViL2(ModelConfig.build(vision, text_config, dropout=dropout), initialize=initialize)
