"""The official evaluation preprocessing and the training-time augmentation.

All functions take uint8 HWC RGB arrays and return float32 CHW tensors normalised with the ImageNet
statistics, the layout the ViT image tower takes.
"""
import inspect
import math
import threading

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


def short_side_shape(height, width, size):
    """(height, width) of the official short-side resize: short side -> size, long side ->
    int(size / short * long) + 1; a square image takes the height branch (height = size, width = long formula),
    and an image whose short side already equals ``size`` keeps its shape."""
    if min(height, width) == size:
        return height, width
    if height <= width:
        new_height, new_width = size, int(size / height * width) + 1
    else:
        new_height, new_width = int(size / width * height) + 1, size
    if new_height * new_width > MAX_RESIZED_PIXELS:
        # Extreme aspect ratios (e.g. 1 x 100000) would otherwise allocate gigabytes for a 224 crop.
        raise ValueError(f"image of {width} x {height} would be resized to {new_width} x {new_height}, over the "
                         f"limit of {MAX_RESIZED_PIXELS} pixels (aspect ratio too extreme)")
    return new_height, new_width


def resize_short_side(rgb, size):
    """The official short-side resize (short_side_shape), bilinear.

    An image whose short side already equals ``size`` is returned unchanged (the golden 224x224 rows show this).
    """
    height, width = rgb.shape[:2]
    new_height, new_width = short_side_shape(height, width, size)
    if (new_height, new_width) == (height, width):
        return rgb
    # cv2.resize takes (width, height).
    return cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def resize_reduced(rgb, reduction, full_shape, size):
    """resize_short_side of an image given as its decode reduced by ``reduction`` (JPEG DCT scaling: 1/2, 1/4,
    1/8, see data.images.decode_image_reduced) and its full-size (height, width).

    The result has the shape of resize_short_side(full image) and every pixel sits where it would there:
    cv2.resize maps output x to full-size x_f = (x + 0.5) * W / w - 0.5, and reduced pixel j covers full-size
    pixels [j * r, (j + 1) * r), i.e. x_r = (x_f + 0.5) / r - 0.5; so x_r = (x + 0.5) * W / (w * r) - 0.5, which
    is cv2.resize's own mapping with the scale factor fx = w * r / W given explicitly (not derived from sizes).
    Only the resampling differs: the decoder averages r x r blocks, then a bilinear step of less than 2x
    (instead of one bilinear step of up to 2r x, which skips pixels).
    """
    height, width = full_shape
    new_height, new_width = short_side_shape(height, width, size)
    if reduction == 1:
        return resize_short_side(rgb, size)
    resized = cv2.resize(rgb, None, fx=new_width * reduction / width, fy=new_height * reduction / height,
                         interpolation=cv2.INTER_LINEAR)
    if resized.shape[0] < new_height or resized.shape[1] < new_width:
        raise ValueError(f"a 1/{reduction} decode of {resized.shape[1]} x {resized.shape[0]} pixels cannot stand "
                         f"for a {width} x {height} image")
    return resized[:new_height, :new_width]


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
    return _to_chw(cv2.transform(image, matrix))


def preprocess_eval(rgb, size=224):
    """Official test-mode preprocessing -> float32 [3, size, size]."""
    rgb = _check_rgb(rgb)
    cropped = center_crop(resize_short_side(rgb, size), size)
    return _normalize_to_chw(cropped.astype(np.float32), _NORMALIZE_FROM_BYTE)


# ---- training augmentation -------------------------------------------------------------------------
_IDENTITY = np.eye(3, dtype=np.float32)
_TO_GRAY = np.tile(LUMA_WEIGHTS, (3, 1))  # every output channel is the luma
# The largest float32 below 360: "x > it" is "x >= 360" for float32 x, which cv2.threshold (a strict ">") needs.
_BELOW_360 = float(np.nextafter(np.float32(360.0), np.float32(0.0)))


# Each colour op writes into a buffer it is given (dst, and spare for hue's intermediates): the training path
# reuses three per thread instead of allocating a fresh 0.6 MB image per step, which glibc hands back to the OS
# and page-faults in again (measured: up to 10x the cost of the arithmetic).  The adjust_* functions allocate.
def _clip01(image):
    """Clamp to [0, 1] in place; two SIMD threshold passes (np.clip on float32 is several times slower)."""
    cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)  # x > 1 -> 1
    cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)  # x <= 0 -> 0
    return image


def _brightness(src, dst, factor, scale=1.0):
    """Blend with black: factor * img.  ``scale``: src holds the image divided by it (a deferred 1/255).
    (torchvision clamps to [0, 1] after every jitter op, so consecutive ops cannot be merged into one matrix.)"""
    cv2.transform(src, _color_matrix(factor * scale * _IDENTITY), dst=dst)
    # factor >= 0 on values >= 0 gives values >= 0, and factor <= 1 cannot exceed the input: exact, no clamp needed.
    if factor > 1.0:
        cv2.threshold(dst, 1.0, 1.0, cv2.THRESH_TRUNC, dst=dst)
    return dst


def _contrast(src, dst, factor, scale=1.0):
    """Blend with the mean luma of the whole image."""
    # Luma is linear, so the mean luma is the luma of the per-channel means.
    mean_luma = float(np.dot(LUMA_WEIGHTS, cv2.mean(src)[:3])) * scale
    cv2.transform(src, _color_matrix(factor * scale * _IDENTITY, (1.0 - factor) * mean_luma), dst=dst)
    return _clamp_blend(dst, factor)


def _saturation(src, dst, factor, scale=1.0):
    """Blend with each pixel's own luma."""
    cv2.transform(src, _color_matrix((factor * _IDENTITY + (1.0 - factor) * _TO_GRAY) * scale), dst=dst)
    return _clamp_blend(dst, factor)


def _clamp_blend(image, factor):
    # A blend with factor <= 1 has non-negative weights, so no value goes below 0 (above 1 it may, by rounding).
    return _clip01(image) if factor > 1.0 else cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)[1]


def _hsv2rgb_wraps_hue():
    """Whether this OpenCV's float HSV -> RGB reads a hue in [360, 720) as hue - 360 (its scalar code takes the
    sector modulo 6, its SIMD code too); checked on enough pixels for both code paths, else we wrap ourselves."""
    rng = np.random.default_rng(0)
    hsv = np.stack([rng.uniform(0, 360, 1027), rng.random(1027), rng.random(1027)], -1).astype(np.float32)[None]
    turned = hsv.copy()
    turned[..., 0] += np.float32(360.0)
    return bool(np.abs(cv2.cvtColor(turned, cv2.COLOR_HSV2RGB) - cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)).max() < 1e-5)


_HSV2RGB_WRAPS_HUE = _hsv2rgb_wraps_hue()


def _hue(src, dst, shift, spare):
    """Rotate hue by ``shift`` of a full turn (shift in [-0.5, 0.5]); ``spare`` holds the HSV image."""
    hsv = cv2.cvtColor(src, cv2.COLOR_RGB2HSV, dst=spare)  # float input: H in degrees [0, 360), S, V in [0, 1]
    degrees = float(np.float32(shift * 360.0)) % 360.0  # a turn forwards, so only ">= 360" needs wrapping
    cv2.add(hsv, (degrees, 0.0, 0.0, 0.0), dst=hsv)
    if not _HSV2RGB_WRAPS_HUE:
        # 360 where H >= 360, else 0 (S and V are at most 1): whole-array passes, no strided H-channel views.
        wrap = cv2.threshold(hsv, _BELOW_360, 360.0, cv2.THRESH_BINARY, dst=dst)[1]
        cv2.subtract(hsv, wrap, dst=hsv)
    return _clip01(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=dst))


def adjust_brightness(rgb01, factor):
    return _brightness(rgb01, np.empty_like(rgb01), factor)


def adjust_contrast(rgb01, factor):
    return _contrast(rgb01, np.empty_like(rgb01), factor)


def adjust_saturation(rgb01, factor):
    return _saturation(rgb01, np.empty_like(rgb01), factor)


def adjust_hue(rgb01, shift):
    return _hue(rgb01, np.empty_like(rgb01), shift, np.empty_like(rgb01))


def to_grayscale(rgb01):
    """ITU-R 601 luma replicated to 3 channels (no clipping needed: the weights sum to 1)."""
    return cv2.transform(rgb01, _color_matrix(_TO_GRAY))


def augment_train(rgb, rng, size=224, flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                  brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_sigma=(0.1, 2.0)):
    """The release's training view -> float32 [3, size, size], a pure function of (image, rng state).

    Order: short-side resize, random crop, horizontal flip, colour jitter (the four ops in random order,
    torchvision semantics), random grayscale, 5x5 Gaussian blur, ImageNet normalisation.
    Every random number is drawn on every call in a fixed order, whichever branches fire, so a seed
    fixes the crop no matter the probabilities (tests exploit this by forcing branches with p=0/1).
    """
    return augment_resized(resize_short_side(_check_rgb(rgb), size), rng, size, flip_p=flip_p, jitter_p=jitter_p,
                           gray_p=gray_p, blur_p=blur_p, brightness=brightness, contrast=contrast,
                           saturation=saturation, hue=hue, blur_sigma=blur_sigma)


AUGMENT_OPTIONS = {name: p.default for name, p in inspect.signature(augment_train).parameters.items()
                   if name not in ("rgb", "rng", "size")}
_SCRATCH = threading.local()


def _scratch_buffers(size):
    """Three float32 [size, size, 3] work images of this thread (see _clip01)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None or buffers[0].shape[0] != size:
        buffers = _SCRATCH.buffers = tuple(np.empty((size, size, 3), np.float32) for _ in range(3))
    return buffers


# The colour draws of one view (draw_view), as one float64 vector: which ops fire, the jitter's order and factors,
# the blur's sigma.  apply_colour reads it here; train.view_colour applies it batched on the training device.
COLOUR_DRAWS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast", "saturation", "hue",
                "gray", "blur", "sigma")
DRAW = {name: k for k, name in enumerate(COLOUR_DRAWS)}


def augment_resized(resized, rng, size=224, **options):
    """augment_train of an image already short-side resized (resize_short_side or resize_reduced), so that the
    views of one image share one resize.  ``options``: those of augment_train (AUGMENT_OPTIONS).  It is
    draw_view (every random number, the crop and the flip) followed by apply_colour (the per-pixel float work),
    so that the colour work can run elsewhere (train.view_colour) on the same draws."""
    return apply_colour(*draw_view(resized, rng, size, **options))


def draw_view(resized, rng, size=224, **options):
    """The random and geometric half of a training view: (the uint8 crop [size, size, 3], flipped if drawn; its
    colour draws, float64 [len(COLOUR_DRAWS)]).  Every random number is drawn here, in augment_train's order."""
    unknown = sorted(set(options) - set(AUGMENT_OPTIONS))
    if unknown:
        raise TypeError(f"unknown augmentation option(s) {', '.join(unknown)}; expected some of "
                        f"{', '.join(AUGMENT_OPTIONS)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    o = {**AUGMENT_OPTIONS, **options}
    height, width = resized.shape[:2]
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    do_flip = rng.random() < o["flip_p"]
    draws = np.empty(len(COLOUR_DRAWS), np.float64)
    draws[DRAW["jitter"]] = rng.random() < o["jitter_p"]
    draws[DRAW["order0"]:DRAW["order3"] + 1] = rng.permutation(4)
    for name in ("brightness", "contrast", "saturation"):
        draws[DRAW[name]] = rng.uniform(max(0.0, 1.0 - o[name]), 1.0 + o[name])
    draws[DRAW["hue"]] = rng.uniform(-o["hue"], o["hue"])
    draws[DRAW["gray"]] = rng.random() < o["gray_p"]
    draws[DRAW["blur"]] = rng.random() < o["blur_p"]
    draws[DRAW["sigma"]] = rng.uniform(*o["blur_sigma"])
    view = resized[top:top + size, left:left + size]
    if view.shape[:2] != (size, size):  # resize_short_side always leaves at least size x size
        raise ValueError(f"expected an image resized to a short side of {size}, got {resized.shape[:2]}")
    # cv2.flip of the uint8 crop: numpy converts a reversed view to float 50x slower.
    return (cv2.flip(view, 1) if do_flip else view), draws


def apply_colour(crop, draws):
    """The per-pixel half of a training view: a uint8 crop and its colour draws (draw_view) -> float32 [3, H, W].

    Few passes: one conversion to float, the jitter ops (one matrix pass and the clamps that can bite, into reused
    buffers), grayscale and normalisation as one composed matrix, then the blur (a per-channel filter whose
    weights sum to 1 commutes with per-pixel affine colour maps, so blurring after normalising gives the same image
    up to float rounding), and the split into CHW planes."""
    size = crop.shape[0]
    image, spare_a, spare_b = _scratch_buffers(size)
    # Converting after the crop keeps the float work at size x size.  The 1/255 is deferred into the next matrix
    # op (`scale`), which saves a pass; only hue needs values in [0, 1] as they are.
    np.copyto(image, crop, casting="unsafe")
    scale = 1.0 / 255.0
    if draws[DRAW["jitter"]]:
        for op in draws[DRAW["order0"]:DRAW["order3"] + 1].astype(int):
            if op == 0:
                image, spare_a = _brightness(image, spare_a, draws[DRAW["brightness"]], scale), image
            elif op == 1:
                image, spare_a = _contrast(image, spare_a, draws[DRAW["contrast"]], scale), image
            elif op == 2:
                image, spare_a = _saturation(image, spare_a, draws[DRAW["saturation"]], scale), image
            elif draws[DRAW["hue"]] != 0.0:
                if scale != 1.0:
                    np.multiply(image, np.float32(scale), out=image)
                image, spare_a = _hue(image, spare_a, draws[DRAW["hue"]], spare_b), image
            else:
                continue
            scale = 1.0
    # Grayscale needs no clamp, so it composes with the normalisation (and a deferred 1/255) into one matrix.
    linear = _NORMALIZE_FROM_UNIT[:, :3] @ _TO_GRAY if draws[DRAW["gray"]] else _NORMALIZE_FROM_UNIT[:, :3]
    image, spare_a = cv2.transform(image, _color_matrix(linear * scale, _NORMALIZE_FROM_UNIT[:, 3]), dst=spare_a), image
    if draws[DRAW["blur"]]:
        # cv2's default border (reflect-101) matches torchvision's reflect padding.
        sigma = draws[DRAW["sigma"]]
        image = cv2.GaussianBlur(image, (5, 5), sigmaX=sigma, sigmaY=sigma, dst=spare_a)
    return _to_chw(image)


def _to_chw(image):
    """HWC -> a new C-contiguous CHW array (never a scratch buffer): cv2.split writing into its planes is 4-5x
    faster than numpy's transposed copy."""
    out = np.empty((image.shape[2], *image.shape[:2]), np.float32)
    planes = list(out)
    written = cv2.split(image, planes)
    if any(got is not want for got, want in zip(written, planes)):  # OpenCV chose to allocate: copy them in
        out[:] = written
    return out
