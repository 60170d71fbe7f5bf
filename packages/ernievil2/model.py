"""The ERNIE-ViL 2.0 dual encoder: an image tower, a text tower and the learnable contrastive temperature.

Top-level names match the official checkpoint: `visual.*`, `text_model.*`, `contrastive_loss_mm.temperature_b`.
Both towers emit un-normalised embeddings of the same width (no projection heads, as released).
"""
import math
from dataclasses import dataclass, field

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .text_tower import ErnieTextModel, TextConfig
from .vision_tower import VISION_PRESETS, VisionConfig, VisionTransformer

INITIAL_TEMPERATURE = math.log(1 / 0.07)  # 2.65926, CLIP's initial logit scale of 1/0.07


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        if self.vision.width != self.text.hidden_size:
            raise ValueError(f"model: vision width {self.vision.width} differs from text hidden_size "
                             f"{self.text.hidden_size}; the towers share one embedding space without projections")

    @classmethod
    def build(cls, vision="vit_b16", text=None, dropout=None):
        """vision: a preset name (vit_b16, vit_l14) or a dict of VisionConfig fields (optionally with `preset`);
        text: a path to an ernie_config JSON, a dict of TextConfig fields, or None for ERNIE 3.0 base;
        dropout: if given, overrides every dropout probability of both towers (0 turns dropout off)."""
        vision_cfg = _vision_config(vision)
        if text is None:
            text_cfg = TextConfig()
        elif isinstance(text, str):
            text_cfg = TextConfig.from_json(text)
        else:
            text_cfg = TextConfig.from_dict(dict(text), source="model.text")
        if dropout is not None:
            vision_cfg.dropout = float(dropout)
            text_cfg.hidden_dropout_prob = float(dropout)
            text_cfg.attention_probs_dropout_prob = float(dropout)
        return cls(vision=vision_cfg, text=text_cfg)


def _vision_config(spec):
    if isinstance(spec, VisionConfig):
        return spec
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", None)
    values = {}
    if preset is not None:
        if preset not in VISION_PRESETS:
            raise ValueError(f"model.vision: unknown preset {preset!r}; choose one of {', '.join(VISION_PRESETS)}")
        values.update(VISION_PRESETS[preset])
    known = set(VisionConfig.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"model.vision: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    values.update(spec)
    return VisionConfig(**values)


class ContrastiveHead(nn.Layer):
    """Holds the log logit scale.  The loss module (losses.py) uses it; the name mirrors the official file."""

    def __init__(self):
        super().__init__()
        self.temperature_b = self.create_parameter(
            [1], default_initializer=nn.initializer.Constant(INITIAL_TEMPERATURE))


class ErnieViL2(nn.Layer):
    def __init__(self, config: ModelConfig = None, initialize=True):
        """initialize=False skips the from-scratch initialisation (seconds for Base) when weights are loaded next."""
        super().__init__()
        self.config = config or ModelConfig()
        self.visual = VisionTransformer(self.config.vision)
        self.text_model = ErnieTextModel(self.config.text)
        self.contrastive_loss_mm = ContrastiveHead()
        if initialize:
            initialize_weights(self)

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


def initialize_weights(model, std=0.02):
    """BERT/CLIP-style initialisation for training from scratch (a checkpoint load overwrites all of it)."""
    with paddle.no_grad():
        for layer in model.sublayers():
            if isinstance(layer, (nn.Linear, nn.Embedding)):
                layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape))
                if isinstance(layer, nn.Linear) and layer.bias is not None:
                    layer.bias.set_value(paddle.zeros(layer.bias.shape))
            elif isinstance(layer, nn.LayerNorm):
                layer.weight.set_value(paddle.ones(layer.weight.shape))
                layer.bias.set_value(paddle.zeros(layer.bias.shape))
            elif isinstance(layer, nn.Conv2D):
                fan_in = int(math.prod(layer.weight.shape[1:]))
                layer.weight.set_value(paddle.normal(0.0, fan_in ** -0.5, layer.weight.shape))
