"""CLIP-style Vision Transformer: the ERNIE-ViL 2.0 image tower.

Attribute names follow the official checkpoint (`visual.patch_embed.proj`, `visual.blocks.N.attn.qkv`, ...),
so an official state dict loads without renaming.  The image embedding is the class token after `norm_post`.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from .configs import VisionConfig

# 1.702 as float32 holds it: the value float32 models always used, and the one a static program (paddle.jit), which
# keeps Python numbers as float32 attributes, uses in float64 too, so float64 runs agree op by op and static.
QUICK_GELU_SLOPE = float(np.float32(1.702))


class QuickGELU(nn.Layer):
    """CLIP's sigmoid approximation of GELU; the released weights were trained with it, not exact GELU."""

    def forward(self, x):
        return x * F.sigmoid(QUICK_GELU_SLOPE * x)


class PatchEmbed(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Conv2D(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias_attr=False)

    def forward(self, pixels):
        x = self.proj(pixels)  # [B, W, g, g]
        return x.flatten(2).transpose([0, 2, 1])  # [B, g*g, W]


class FusedQKVAttention(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x):
        b, n, w = x.shape
        # The fused output is laid out [q | k | v], each split into heads.
        qkv = self.qkv(x).reshape([b, n, 3 * self.heads, w // self.heads])
        q, k, v = paddle.split(qkv, 3, axis=2)  # each [B, N, H, hd], the layout SDPA expects
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout, training=self.training)
        return self.proj(out.reshape([b, n, w]))


class Mlp(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, cfg.width)
        # Identity when off: a p=0 dropout still copies its input in training mode.
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VisionBlock(nn.Layer):
    """Pre-LN transformer block."""

    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps)
        self.attn = FusedQKVAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.recompute = False  # the trainer turns this on to trade compute for activation memory
        w = cfg.width
        self.patch_embed = PatchEmbed(cfg)
        scale = w ** -0.5
        self.class_embedding = self.create_parameter(
            [1, 1, w], default_initializer=nn.initializer.Normal(std=scale))
        self.positional_embedding = self.create_parameter(
            [1, cfg.num_positions, w], default_initializer=nn.initializer.Normal(std=scale))
        self.norm_pre = nn.LayerNorm(w, epsilon=cfg.layer_norm_eps)
        self.blocks = nn.LayerList([VisionBlock(cfg) for _ in range(cfg.layers)])
        self.norm_post = nn.LayerNorm(w, epsilon=cfg.layer_norm_eps)

    def forward(self, pixels):
        if self.class_embedding.dtype == paddle.float64:  # a model trained in float64 takes float32 pixels too
            pixels = pixels.astype("float64")
        x = self.patch_embed(pixels)
        cls = self.class_embedding.expand([x.shape[0], 1, x.shape[2]]).astype(x.dtype)
        x = paddle.concat([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
        x = self.norm_pre(x)
        for block in self.blocks:
            if self.recompute and self.training:
                x = recompute(block, x)
            else:
                x = block(x)
        x = self.norm_post(x)
        return x[:, 0]
