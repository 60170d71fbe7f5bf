"""The optimiser side of training: frozen layers, which parameters are weight-decayed, the learning-rate
schedule (linear warmup + cosine) and AdamW with gradient clipping."""
import math
import re

import paddle
import paddle.nn as nn

_VISION_BLOCK = r"visual\.blocks\.(\d+)\."
_TEXT_BLOCK = r"text_model\.encoder_stack\.block\.(\d+)\."
_VISION_EMBEDDINGS = ("visual.class_embedding", "visual.positional_embedding", "visual.patch_embed",
                      "visual.norm_pre")
_TEXT_EMBEDDINGS = ("text_model.word_emb", "text_model.pos_emb", "text_model.ln.")


def freeze_layers(model, freeze):
    """Stop gradients for whole towers or their lowest N blocks (embeddings included); returns the names."""
    frozen = []
    for name, param in model.named_parameters():
        tower_frozen = ((name.startswith("visual.") and freeze.visual)
                        or (name.startswith("text_model.") and freeze.text))
        layer_frozen = (_below(name, _VISION_BLOCK, "visual.", freeze.visual_layers, _VISION_EMBEDDINGS)
                        or _below(name, _TEXT_BLOCK, "text_model.", freeze.text_layers, _TEXT_EMBEDDINGS))
        if tower_frozen or layer_frozen:
            param.stop_gradient = True
            frozen.append(name)
    return frozen


def _below(name, block_pattern, prefix, n_layers, embedding_prefixes):
    if n_layers <= 0 or not name.startswith(prefix):
        return False
    match = re.match(block_pattern, name)
    if match:
        return int(match.group(1)) < n_layers
    return name.startswith(embedding_prefixes)


def no_decay(name):
    """Norms, biases, embeddings and the temperature are not weight-decayed."""
    return (name.endswith(".bias") or ".norm" in name or ".ln" in name or "_emb" in name or "embedding" in name
            or name.endswith("temperature_b"))


def lr_factor(step, warmup, total, min_ratio):
    """Linear warmup to 1, then cosine decay to min_ratio at `total` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, optimizer_cfg, schedule_cfg, max_steps):
    """(LR scheduler, AdamW) over the model's trainable parameters (config sections `optimizer`, `schedule`)."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    decay_names = {p.name for n, p in model.named_parameters() if not no_decay(n)}
    scheduler = paddle.optimizer.lr.LambdaDecay(
        optimizer_cfg.lr,
        lambda s: lr_factor(s, schedule_cfg.warmup_steps, max_steps, schedule_cfg.min_lr_ratio))
    clip = nn.ClipGradByGlobalNorm(optimizer_cfg.grad_clip) if optimizer_cfg.grad_clip > 0 else None
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler, parameters=params, weight_decay=optimizer_cfg.weight_decay,
        apply_decay_param_fun=lambda name: name in decay_names, beta1=optimizer_cfg.beta1,
        beta2=optimizer_cfg.beta2, epsilon=optimizer_cfg.epsilon, grad_clip=clip)
    return scheduler, optimizer
