"""ERNIE 3.0 text tower (post-LN BERT-style encoder with a tanh pooler).

Attribute names follow the official checkpoint (`text_model.word_emb`, `text_model.encoder_stack.block.N.attn.q`,
...).  Padding (id `pad_token_id`) is masked out of attention, so a text's embedding does not depend on how much
padding its batch carries.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..errors import ConfigError
from .configs import TextConfig


class TextSelfAttention(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.dropout = cfg.attention_probs_dropout_prob
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x, attn_mask):
        b, n, d = x.shape
        shape = [b, n, self.heads, d // self.heads]
        q, k, v = (proj(x).reshape(shape) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout,
                                             training=self.training)
        return self.o(out.reshape([b, n, d]))


class FeedForward(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.i = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.o = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = nn.GELU() if cfg.hidden_act == "gelu" else nn.ReLU()  # exact (erf) GELU, as ERNIE 3.0

    def forward(self, x):
        return self.o(self.act(self.i(x)))


class TextBlock(nn.Layer):
    """Post-LN block: LayerNorm after each residual sum."""

    def __init__(self, cfg):
        super().__init__()
        self.attn = TextSelfAttention(cfg)
        self.ln1 = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, attn_mask):
        x = self.ln1(x + self.dropout(self.attn(x, attn_mask)))
        return self.ln2(x + self.dropout(self.ffn(x)))


class EncoderStack(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.block = nn.LayerList([TextBlock(cfg) for _ in range(cfg.num_hidden_layers)])


class ErnieTextModel(nn.Layer):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.recompute = False
        d = cfg.hidden_size
        self.word_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.max_position_embeddings, d)
        self.ln = nn.LayerNorm(d, epsilon=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.encoder_stack = EncoderStack(cfg)
        self.pooler = nn.Linear(d, d)

    def forward(self, input_ids):
        n = input_ids.shape[1]
        if isinstance(n, int) and n > self.config.max_position_embeddings:  # symbolic when exported
            raise ConfigError(f"text of {n} tokens exceeds the text tower's max_position_embeddings "
                              f"{self.config.max_position_embeddings}; lower max_text_seqlen (data.max_text_len)")
        positions = paddle.arange(n, dtype="int64").unsqueeze(0)
        x = self.dropout(self.ln(self.word_emb(input_ids) + self.pos_emb(positions)))
        # [B, 1, 1, N] boolean mask: every query may attend to every non-padding key.
        attn_mask = (input_ids != self.config.pad_token_id).unsqueeze([1, 2])
        for block in self.encoder_stack.block:
            if self.recompute and self.training:
                x = recompute(block, x, attn_mask)
            else:
                x = block(x, attn_mask)
        return F.tanh(self.pooler(x[:, 0]))
