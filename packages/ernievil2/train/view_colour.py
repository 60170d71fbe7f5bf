"""The colour half of the training augmentation, batched on the training device.

With `data.colour_work: device` the loader sends each view as its uint8 crop and its colour draws
(data.transforms.draw_view): a quarter of the bytes of a float view, and none of the per-pixel float work, which
is most of a sample's CPU time.  `colour_views` then applies the draws to the whole batch where the model runs:
colour jitter (brightness, contrast, saturation, hue, each sample in its own drawn order, torchvision's clamps),
grayscale, the 5x5 Gaussian blur and the ImageNet normalisation: the ops of data.transforms.apply_colour, equal
to float32 rounding (tests/train/test_view_colour.py checks both against a float64 reference).
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from ..data.transforms import DRAW, IMAGENET_MEAN, IMAGENET_STD, LUMA_WEIGHTS


def colour_views(crops, draws):
    """uint8 crops [B, H, W, 3] (numpy or tensor) and their colour draws float64 [B, len(COLOUR_DRAWS)] (numpy) ->
    float32 views [B, 3, H, W], normalised as the image tower takes them."""
    draws = np.asarray(draws, np.float64)
    x = paddle.to_tensor(crops).astype("float32").transpose([0, 3, 1, 2]) * (1.0 / 255.0)
    jitter = draws[:, DRAW["jitter"]] > 0
    for position in range(4):
        drawn_op = draws[:, DRAW[f"order{position}"]]
        for op, (name, jitter_op) in enumerate(_JITTER.items()):  # op k is draw_view's k
            rows = jitter & (drawn_op == op)
            if name == "hue":
                rows &= draws[:, DRAW["hue"]] != 0.0
            x = _apply_to_rows(x, rows, jitter_op, draws[:, DRAW[name]])
    x = _apply_to_rows(x, draws[:, DRAW["gray"]] > 0, lambda sub, _: _luma(sub).expand_as(sub))
    x = _apply_to_rows(x, draws[:, DRAW["blur"]] > 0, _gaussian_blur_5x5, draws[:, DRAW["sigma"]])
    mean = paddle.to_tensor(IMAGENET_MEAN.reshape(1, 3, 1, 1))
    return (x - mean) * paddle.to_tensor((1.0 / IMAGENET_STD).reshape(1, 3, 1, 1).astype(np.float32))


def _apply_to_rows(x, rows, op, values=None):
    """x with op(x[rows], values[rows]) in place of its rows (numpy masks: no device round trip to pick them)."""
    picked = np.flatnonzero(rows)
    if picked.size == 0:
        return x
    if picked.size == x.shape[0]:
        return op(x, None if values is None else values)
    index = paddle.to_tensor(picked)
    changed = op(paddle.index_select(x, index), None if values is None else values[picked])
    return paddle.scatter(x, index, changed, overwrite=True)


def _per_sample(values):
    return paddle.to_tensor(np.asarray(values, np.float32).reshape(-1, 1, 1, 1))


def _luma(x):
    weights = paddle.to_tensor(LUMA_WEIGHTS.reshape(1, 3, 1, 1))
    return (x * weights).sum(axis=1, keepdim=True)


def _brightness(x, factors):
    return paddle.clip(x * _per_sample(factors), 0.0, 1.0)


def _contrast(x, factors):
    f = _per_sample(factors)
    mean_luma = _luma(x).mean(axis=[2, 3], keepdim=True)
    return paddle.clip(x * f + (1.0 - f) * mean_luma, 0.0, 1.0)


def _saturation(x, factors):
    f = _per_sample(factors)
    return paddle.clip(x * f + (1.0 - f) * _luma(x), 0.0, 1.0)


def _hue(x, shifts):
    """RGB -> HSV, hue + shift (a fraction of a turn, modulo one turn), -> RGB; the textbook formulas."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    value, low = x.max(axis=1, keepdim=True), x.min(axis=1, keepdim=True)
    delta = value - low
    safe = paddle.where(delta > 0, delta, paddle.ones_like(delta))
    hue = paddle.where(value == r, (g - b) / safe,
                       paddle.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = paddle.where(delta > 0, paddle.remainder(hue / 6.0, paddle.ones_like(hue)), paddle.zeros_like(hue))
    saturation = paddle.where(value > 0, delta / paddle.where(value > 0, value, paddle.ones_like(value)),
                              paddle.zeros_like(value))
    turned = paddle.remainder(hue + _per_sample(shifts), paddle.ones_like(hue)) * 6.0
    sector = paddle.floor(turned)
    f = turned - sector
    sector = paddle.remainder(sector, paddle.full_like(sector, 6.0))
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * f)
    t = value * (1.0 - saturation * (1.0 - f))
    # (r, g, b) of each of the six sectors of the hue circle
    table = ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))
    out = paddle.zeros_like(x)
    for k, channels in enumerate(table):
        out = paddle.where(sector == k, paddle.concat(channels, axis=1), out)
    return paddle.clip(out, 0.0, 1.0)


# In the numbering of data.transforms (draw_view's op order, apply_colour's branches).
_JITTER = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}


def _gaussian_blur_5x5(x, sigmas):
    """Each image blurred with its own sigma: OpenCV's 5-tap Gaussian for that sigma along rows, then columns,
    with reflect-101 borders (cv2.GaussianBlur's default).  Sums of shifted copies rather than a grouped
    convolution: an image's result must not depend on which others share its batch (2 ranks == 1 rank)."""
    taps = np.arange(5, dtype=np.float64) - 2.0
    kernels = np.exp(-taps[None, :] ** 2 / (2.0 * np.asarray(sigmas, np.float64)[:, None] ** 2))
    kernels = (kernels / kernels.sum(axis=1, keepdims=True)).astype(np.float32)
    weights = [paddle.to_tensor(kernels[:, i].reshape(-1, 1, 1, 1)) for i in range(5)]
    h, w = x.shape[2], x.shape[3]
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")  # "reflect" repeats no edge pixel: OpenCV's reflect-101
    rows = sum(weights[i] * padded[:, :, :, i:i + w] for i in range(5))
    return sum(weights[i] * rows[:, :, i:i + h, :] for i in range(5))
