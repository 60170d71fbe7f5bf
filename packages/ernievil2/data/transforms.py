"""The official evaluation preprocessing and the training-time augmentation.

All functions take uint8 HWC RGB arrays and return float32 CHW tensors normalised with the ImageNet
statistics, the layout the ViT image tower takes.
"""
import math

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# ITU-R BT.601 luma weights, used by grayscale and by the colour-jitter contrast/saturation blends.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Upper bound for the short-side-resized image (about 200 MB as uint8 RGB), i.e. aspect ratios up to ~1300:1 at 224.
MAX_RESIZED_PIXELS = 64 * 2**20


# ---- geometry --------------------------------------------------------------------------------------
def _check_rgb(rgb):
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        described = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected a uint8 HWC RGB array with 3 channels, got {described}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image has no pixels (shape {rgb.shape})")
    # cv2 rejects views with negative strides (e.g. rgb[:, ::-1]); a copy only happens for such views.
    return np.ascontiguousarray(rgb)


def resize_short_side(rgb, size):
    """The official short-side resize: short side -> size, long side -> int(size / short * long) + 1.

    An image whose short side already equals ``size`` is returned unchanged (the golden 224x224 rows
    show this), and a square image takes the height branch (height = size, width = long formula).
    """
    height, width = rgb.shape[:2]
    if min(height, width) == size:
        return rgb
    if height <= width:
        new_height, new_width = size, int(size / height * width) + 1
    else:
        new_height, new_width = int(size / width * height) + 1, size
    if new_height * new_width > MAX_RESIZED_PIXELS:
        # Extreme aspect ratios (e.g. 1 x 100000) would otherwise allocate gigabytes for a 224 crop.
        raise ValueError(f"image of {width} x {height} would be resized to {new_width} x {new_height}, over the "
                         f"limit of {MAX_RESIZED_PIXELS} pixels (aspect ratio too extreme)")
    # cv2.resize takes (width, height).
    return cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def center_crop(rgb, size):
    height, width = rgb.shape[:2]
    top = math.ceil((height - size) / 2)
    left = math.ceil((width - size) / 2)
    return rgb[top:top + size, left:left + size]


def _color_matrix(linear, offset=0.0):
    """3x4 matrix for cv2.transform: out = linear @ rgb + offset, per pixel (one fast C++ pass)."""
    matrix = np.empty((3, 4), dtype=np.float32)
    matrix[:, :3] = linear
    matrix[:, 3] = offset
    return matrix


# Normalisation folded into one affine map per input scale: (x * scale - mean) / std.
_NORMALIZE_FROM_UNIT = _color_matrix(np.diag(1.0 / IMAGENET_STD), -IMAGENET_MEAN / IMAGENET_STD)
_NORMALIZE_FROM_BYTE = _color_matrix(np.diag(1.0 / (255.0 * IMAGENET_STD)), -IMAGENET_MEAN / IMAGENET_STD)


def _normalize_to_chw(image, matrix):
    # Broadcasting over a length-3 last axis is slow in numpy; cv2.transform does it in one pass.
    return np.ascontiguousarray(cv2.transform(image, matrix).transpose(2, 0, 1))


def preprocess_eval(rgb, size=224):
    """Official test-mode preprocessing -> float32 [3, size, size]."""
    rgb = _check_rgb(rgb)
    cropped = center_crop(resize_short_side(rgb, size), size)
    return _normalize_to_chw(cropped.astype(np.float32), _NORMALIZE_FROM_BYTE)


# ---- training augmentation -------------------------------------------------------------------------
_IDENTITY = np.eye(3, dtype=np.float32)
_TO_GRAY = np.tile(LUMA_WEIGHTS, (3, 1))  # every output channel is the luma


def _blend_and_clip(rgb01, matrix):
    # torchvision clamps to [0, 1] after every jitter op, so consecutive ops cannot be merged.
    out = cv2.transform(rgb01, matrix)
    return np.clip(out, 0.0, 1.0, out=out)


def adjust_brightness(rgb01, factor):
    """Blend with black: factor * img."""
    return _blend_and_clip(rgb01, _color_matrix(factor * _IDENTITY))


def adjust_contrast(rgb01, factor):
    """Blend with the mean luma of the whole image."""
    # Luma is linear, so the mean luma is the luma of the per-channel means.
    mean_luma = float(np.dot(LUMA_WEIGHTS, cv2.mean(rgb01)[:3]))
    return _blend_and_clip(rgb01, _color_matrix(factor * _IDENTITY, (1.0 - factor) * mean_luma))


def adjust_saturation(rgb01, factor):
    """Blend with each pixel's own luma."""
    return _blend_and_clip(rgb01, _color_matrix(factor * _IDENTITY + (1.0 - factor) * _TO_GRAY))


def to_grayscale(rgb01):
    """ITU-R 601 luma replicated to 3 channels (no clipping needed: the weights sum to 1)."""
    return cv2.transform(rgb01, _color_matrix(_TO_GRAY))


def adjust_hue(rgb01, shift):
    """Rotate hue by ``shift`` of a full turn (shift in [-0.5, 0.5])."""
    hsv = cv2.cvtColor(rgb01, cv2.COLOR_RGB2HSV)  # float input: H in degrees [0, 360)
    hue = hsv[:, :, 0]
    hue += np.float32(shift * 360.0)
    np.subtract(hue, np.float32(360.0), out=hue, where=hue >= 360.0)
    np.add(hue, np.float32(360.0), out=hue, where=hue < 0.0)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(out, 0.0, 1.0, out=out)


def augment_train(rgb, rng, size=224, flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                  brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_sigma=(0.1, 2.0)):
    """The release's training view -> float32 [3, size, size], a pure function of (image, rng state).

    Order: short-side resize, random crop, horizontal flip, colour jitter (the four ops in random order,
    torchvision semantics), random grayscale, 5x5 Gaussian blur, ImageNet normalisation.
    Every random number is drawn on every call in a fixed order, whichever branches fire, so a seed
    fixes the crop no matter the probabilities (tests exploit this by forcing branches with p=0/1).
    """
    rgb = _check_rgb(rgb)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    resized = resize_short_side(rgb, size)
    height, width = resized.shape[:2]
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    do_flip = rng.random() < flip_p
    do_jitter = rng.random() < jitter_p
    op_order = rng.permutation(4)
    brightness_factor = rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness)
    contrast_factor = rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast)
    saturation_factor = rng.uniform(max(0.0, 1.0 - saturation), 1.0 + saturation)
    hue_shift = rng.uniform(-hue, hue)
    do_gray = rng.random() < gray_p
    do_blur = rng.random() < blur_p
    sigma = rng.uniform(*blur_sigma)

    view = resized[top:top + size, left:left + size]
    if do_flip:
        view = view[:, ::-1]
    # Converting after the crop keeps the float work at size x size.
    image = np.multiply(view, np.float32(1.0 / 255.0), dtype=np.float32)
    if do_jitter:
        for op in op_order:
            if op == 0:
                image = adjust_brightness(image, brightness_factor)
            elif op == 1:
                image = adjust_contrast(image, contrast_factor)
            elif op == 2:
                image = adjust_saturation(image, saturation_factor)
            elif hue_shift != 0.0:
                image = adjust_hue(image, hue_shift)
    if do_gray:
        image = to_grayscale(image)
    if do_blur:
        # cv2's default border (reflect-101) matches torchvision's reflect padding.
        image = cv2.GaussianBlur(image, (5, 5), sigmaX=sigma, sigmaY=sigma)
    return _normalize_to_chw(image, _NORMALIZE_FROM_UNIT)
