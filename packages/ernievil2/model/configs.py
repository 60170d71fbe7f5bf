"""Model configurations (no Paddle here, so configs validate before Paddle loads): the ViT image tower, the
ERNIE 3.0 text tower, the dual encoder that pairs them, and the initial contrastive temperature."""
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from ..errors import ConfigError, InputError


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0  # the released model was trained without dropout in the image tower

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"vision: width {self.width} is not divisible by heads {self.heads}")

    @property
    def num_positions(self):
        return (self.image_size // self.patch_size) ** 2 + 1

    def to_dict(self):
        return asdict(self)


VISION_PRESETS = {
    "vit_b16": dict(patch_size=16, width=768, layers=12, heads=12),
    "vit_l14": dict(patch_size=14, width=1024, layers=24, heads=16),
}


# Keys of the official ernie_config.*.json that describe embeddings the released tower does not have.
_IGNORED_JSON_KEYS = {"sent_type_vocab_size", "task_type_vocab_size", "type_vocab_size", "initializer_range"}


@dataclass
class TextConfig:
    vocab_size: int = 40000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 0  # 0 means 4 * hidden_size
    max_position_embeddings: int = 2048
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 0

    def __post_init__(self):
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"text: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ("gelu", "relu"):
            raise ConfigError(f"text: hidden_act {self.hidden_act!r} is not supported (gelu or relu)")

    @classmethod
    def from_dict(cls, values, source="text config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - _IGNORED_JSON_KEYS)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                              f"expected some of {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json(cls, path):
        if not os.path.isfile(path):
            raise InputError(f"text model config not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        return cls.from_dict(values, source=path)

    def to_dict(self):
        return asdict(self)


INITIAL_TEMPERATURE = math.log(1 / 0.07)  # 2.65926, CLIP's initial logit scale of 1/0.07


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
            raise ConfigError(f"model.vision: unknown preset {preset!r}; choose one of {', '.join(VISION_PRESETS)}")
        values.update(VISION_PRESETS[preset])
    known = set(VisionConfig.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"model.vision: unknown key(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(sorted(known))}")
    values.update(spec)
    return VisionConfig(**values)
