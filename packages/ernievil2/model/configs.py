"""Model configurations (no Paddle here, so configs validate before Paddle loads): the ViT image tower, the
ERNIE 3.0 text tower, the dual encoder that pairs them, and the initial contrastive temperature."""
import json
import math
import os
from dataclasses import asdict, dataclass, field

from ..config import Field, Section, resolve
from ..errors import ConfigError, InputError


def _check_vision(v):
    if v.image_size % v.patch_size:
        raise ConfigError(f"{v.image_size} is not a multiple of patch_size {v.patch_size}", where="image_size")
    if v.width % v.heads:
        raise ConfigError(f"{v.width} is not divisible by heads {v.heads}", where="width")


VISION_SCHEMA = Section({
    "image_size": Field(224, minimum=1, doc="square input side in pixels"),
    "patch_size": Field(16, minimum=1, doc="square patch side in pixels"),
    "width": Field(768, minimum=1, doc="hidden size (= the embedding size; equal to the text hidden_size)"),
    "layers": Field(12, minimum=1, doc="transformer blocks"),
    "heads": Field(12, minimum=1, doc="attention heads"),
    "mlp_ratio": Field(4.0, minimum=0.0, doc="MLP hidden size / width"),
    "layer_norm_eps": Field(1e-6, minimum=0.0),
    "dropout": Field(0.0, minimum=0.0, below=1.0, doc="the released model was trained without dropout here"),
}, check=_check_vision, doc="the ViT image tower: a preset name (vit_b16, vit_l14) or these keys (with `preset`)")


def _check_text(t):
    if t.hidden_size % t.num_attention_heads:
        raise ConfigError(f"{t.hidden_size} is not divisible by num_attention_heads {t.num_attention_heads}",
                          where="hidden_size")


TEXT_SCHEMA = Section({
    "vocab_size": Field(40000, minimum=1),
    "hidden_size": Field(768, minimum=1, doc="equal to the vision width"),
    "num_hidden_layers": Field(12, minimum=1),
    "num_attention_heads": Field(12, minimum=1),
    "intermediate_size": Field(0, minimum=0, doc="0: 4 x hidden_size"),
    "max_position_embeddings": Field(2048, minimum=1, doc="longest text in tokens"),
    "hidden_dropout_prob": Field(0.1, minimum=0.0, below=1.0),
    "attention_probs_dropout_prob": Field(0.1, minimum=0.0, below=1.0),
    "hidden_act": Field("gelu", choices=("gelu", "relu")),
    "layer_norm_eps": Field(1e-5, minimum=0.0),
    "pad_token_id": Field(0, minimum=0),
}, check=_check_text, doc="the ERNIE 3.0 text tower: an ernie_config JSON file or these keys")


def _default(schema, key):
    return schema[key].default


@dataclass
class VisionConfig:
    image_size: int = _default(VISION_SCHEMA, "image_size")
    patch_size: int = _default(VISION_SCHEMA, "patch_size")
    width: int = _default(VISION_SCHEMA, "width")
    layers: int = _default(VISION_SCHEMA, "layers")
    heads: int = _default(VISION_SCHEMA, "heads")
    mlp_ratio: float = _default(VISION_SCHEMA, "mlp_ratio")
    layer_norm_eps: float = _default(VISION_SCHEMA, "layer_norm_eps")
    dropout: float = _default(VISION_SCHEMA, "dropout")

    def __post_init__(self):
        resolve(VISION_SCHEMA, self.to_dict(), prefix="vision.")  # values set in code pass the same checks

    @property
    def num_positions(self):
        return (self.image_size // self.patch_size) ** 2 + 1

    def to_dict(self):
        return asdict(self)


VISION_PRESETS = {
    "vit_b16": dict(patch_size=16, width=768, layers=12, heads=12),
    "vit_l14": dict(patch_size=14, width=1024, layers=24, heads=16),
}
# The mapping form of a vision spec: the tower's keys plus the preset they start from.
VISION_KEYS = Section({**VISION_SCHEMA, "preset": Field(None, type=str, choices=tuple(VISION_PRESETS),
                                                        doc="the preset whose values the other keys change")})


# Keys of the official ernie_config.*.json that describe embeddings the released tower does not have.
_IGNORED_JSON_KEYS = {"sent_type_vocab_size", "task_type_vocab_size", "type_vocab_size", "initializer_range"}


@dataclass
class TextConfig:
    vocab_size: int = _default(TEXT_SCHEMA, "vocab_size")
    hidden_size: int = _default(TEXT_SCHEMA, "hidden_size")
    num_hidden_layers: int = _default(TEXT_SCHEMA, "num_hidden_layers")
    num_attention_heads: int = _default(TEXT_SCHEMA, "num_attention_heads")
    intermediate_size: int = _default(TEXT_SCHEMA, "intermediate_size")
    max_position_embeddings: int = _default(TEXT_SCHEMA, "max_position_embeddings")
    hidden_dropout_prob: float = _default(TEXT_SCHEMA, "hidden_dropout_prob")
    attention_probs_dropout_prob: float = _default(TEXT_SCHEMA, "attention_probs_dropout_prob")
    hidden_act: str = _default(TEXT_SCHEMA, "hidden_act")
    layer_norm_eps: float = _default(TEXT_SCHEMA, "layer_norm_eps")
    pad_token_id: int = _default(TEXT_SCHEMA, "pad_token_id")

    def __post_init__(self):
        resolve(TEXT_SCHEMA, self.to_dict(), prefix="text.")
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.hidden_size

    @classmethod
    def from_dict(cls, values, source=None, prefix="model.text."):
        """From an ernie_config JSON's or a YAML's mapping (keys checked against TEXT_SCHEMA)."""
        values = {k: v for k, v in values.items() if k not in _IGNORED_JSON_KEYS}
        return cls(**resolve(TEXT_SCHEMA, values, source, prefix))

    @classmethod
    def from_json(cls, path):
        if not os.path.isfile(path):
            raise InputError(f"text model config not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        return cls.from_dict(values, source=path, prefix="")

    def to_dict(self):
        return asdict(self)


INITIAL_TEMPERATURE = math.log(1 / 0.07)  # 2.65926, CLIP's initial logit scale of 1/0.07
INIT_SCHEMES = ("normal", "fan_in")  # from-scratch initialisations (model.dual_encoder.initialize_weights)


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        if self.vision.width != self.text.hidden_size:
            raise ConfigError(f"model: vision width {self.vision.width} differs from text hidden_size "
                             f"{self.text.hidden_size}; the towers share one embedding space without projections")

    @classmethod
    def build(cls, vision="vit_b16", text=None, dropout=None):
        """vision: a preset name (vit_b16, vit_l14) or a dict of VisionConfig fields (optionally with `preset`);
        text: a path to an ernie_config JSON, a dict of TextConfig fields, or None for ERNIE 3.0 base;
        dropout: if given, overrides every dropout probability of both towers (0 turns dropout off)."""
        vision_cfg = vision_config(vision)
        if text is None:
            text_cfg = TextConfig()
        elif isinstance(text, str):
            text_cfg = TextConfig.from_json(text)
        else:
            text_cfg = TextConfig.from_dict(dict(text))
        if dropout is not None:
            vision_cfg.dropout = float(dropout)
            text_cfg.hidden_dropout_prob = float(dropout)
            text_cfg.attention_probs_dropout_prob = float(dropout)
        return cls(vision=vision_cfg, text=text_cfg)


def check_text_length(text, max_text_len, key, source=None):
    """A text length the text tower `text` (a TextConfig, a mapping of its keys, or an ernie_config JSON path;
    a missing file is left to whoever opens it) can take; errors name `key`."""
    if isinstance(text, str):
        if not os.path.isfile(text):
            return
        text = TextConfig.from_json(text)
    elif isinstance(text, dict):
        text = TextConfig.from_dict(text, source)
    if max_text_len > text.max_position_embeddings:
        raise ConfigError(f"{max_text_len} is longer than the text tower's max_position_embeddings "
                          f"{text.max_position_embeddings}", where=key)


def vision_config(spec, source=None, key="model.vision"):
    """A VisionConfig from a preset name or a mapping of VISION_SCHEMA keys (optionally with `preset`); errors
    name `key`."""
    if isinstance(spec, VisionConfig):
        return spec
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", None)
    values = {}
    if preset is not None:
        if preset not in VISION_PRESETS:
            raise ConfigError(f"'{key}': unknown preset {preset!r}; choose one of {', '.join(VISION_PRESETS)}",
                              where=source)
        values.update(VISION_PRESETS[preset])
    values.update(spec)
    return VisionConfig(**resolve(VISION_SCHEMA, values, source, prefix=f"{key}."))
