"""Image decoding: encoded bytes (or base64) -> uint8 HWC RGB.  `decode_image` is the one place the package
decodes images.  Three lines of defence keep a hostile file from costing more than the pixel limit:

1. the size every header statement allows (`image_headers`) is checked against the limit before decoding;
2. the decoders' own limits: OpenCV's (set from the environment before cv2 is imported, see
   `runtime.limit_image_decoders`) and Pillow's (its decompression-bomb warning is an error), plus, for Pillow,
   the size it is about to allocate, checked before any pixel is decoded;
3. a decoded image larger than its header promised is refused.

Every decoder failure -- whatever the library raises -- becomes a `BadImageError` (a ValueError), which the
readers count as a bad row and the service answers with a 4xx."""
import base64
import binascii
import io
import os
import re
import warnings

import cv2
import numpy as np

from ..errors import BadImageError
from ..runtime import DEFAULT_MAX_IMAGE_PIXELS, OPENCV_PIXEL_LIMIT_VAR
from .image_headers import ACCEPTED, sniff

try:  # SIMD base64 (a core requirement; the standard library's decoder is ~50x slower on a 100 KB image column)
    from pybase64 import b64decode as _fast_b64decode
except ImportError:  # pragma: no cover - an environment installed before pybase64 was required
    _fast_b64decode = base64.b64decode

DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS

# Formats decoded by Pillow rather than OpenCV: GIF (this OpenCV cannot read it) and JPEG 2000 (OpenCV 4.10's
# OpenJPEG reader crashes the process on truncated files and on files whose header box and codestream disagree;
# Pillow raises an error instead and gives the same pixels for well-formed files).
_PILLOW_FORMATS = {"GIF": "GIF", "JPEG 2000": "JPEG2000"}


# What a pixel costs against max_pixels, by format, when it is not 3 bytes: OpenJPEG decodes JPEG 2000 into a 32-bit
# integer per sample (12 bytes per RGB pixel) before Pillow packs it, so a JPEG 2000 image counts 4 times.
_PIXEL_COST = {"JPEG 2000": 4}


def _check_pixels(width, height, max_pixels, kind=None):
    cost = _PIXEL_COST.get(kind, 1)
    if max_pixels is not None and width * height * cost > max_pixels:
        counted = f", counted {cost} times ({kind} is decoded through 32-bit samples):" if cost > 1 else ","
        raise BadImageError(f"image is {width} x {height} = {width * height} pixels{counted} over the limit of "
                            f"{max_pixels}")


def decode_image(data, max_pixels=DEFAULT_MAX_PIXELS):
    """Encoded image bytes -> uint8 HWC RGB, always 3 channels (as cv2.IMREAD_COLOR gives them).

    Grayscale is replicated to 3 channels and an alpha channel is dropped, exactly like the official
    reader's cv2 call; GIF decodes its first frame.  ``max_pixels`` (None disables it) is checked on the header
    before decoding.  OpenCV's own limit stays at OPENCV_IO_MAX_IMAGE_PIXELS (the default limit unless set in
    the environment) and Pillow's at the largest limit asked for so far.  Raises BadImageError.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"image data must be bytes, not {type(data).__name__}")
    if not data:
        raise BadImageError("cannot decode image: no data (0 bytes)")
    kind, declared = sniff(data)
    if kind is None or kind == "OpenEXR":
        raise BadImageError(f"cannot decode image: {len(data)} bytes starting {data[:8]!r} are not an image "
                            f"format accepted here ({ACCEPTED})")
    if declared is not None:
        _check_pixels(*declared, max_pixels, kind)
    elif max_pixels is not None:  # the size cannot be known without decoding: refuse rather than risk it
        raise BadImageError(f"cannot decode image: its {kind} header is truncated or corrupt (not an image format "
                            f"this reader can size)")
    try:
        if kind in _PILLOW_FORMATS:
            rgb = _decode_pillow(data, _PILLOW_FORMATS[kind], declared, max_pixels)
        else:
            rgb = _decode_opencv(data)
    except BadImageError:
        raise
    except MemoryError:
        raise BadImageError(f"cannot decode image: not enough memory to decode a {kind} file of {len(data)} "
                            f"bytes") from None
    except Exception as exc:  # noqa: BLE001 - a decoder may raise anything on hostile bytes; all are bad images
        decoder = "Pillow" if kind in _PILLOW_FORMATS else "OpenCV"
        raise BadImageError(f"cannot decode image: a {kind} file of {len(data)} bytes that {decoder} cannot "
                            f"read (truncated/corrupt?): {_reason(exc)}") from None
    if declared is not None:
        _check_decoded(rgb, kind, declared)
    return rgb


def _reason(exc):
    """A decoder exception in a line, without OpenCV's source path (messages reach the service's clients)."""
    if isinstance(exc, cv2.error) and getattr(exc, "err", None):
        if "CV_IO_MAX_IMAGE_PIXELS" in exc.err:
            limit = os.environ.get(OPENCV_PIXEL_LIMIT_VAR)
            return (f"over OpenCV's own pixel limit, OPENCV_IO_MAX_IMAGE_PIXELS={limit}"
                    f" (set it higher in the environment to decode larger images)")
        return "OpenCV error: " + " ".join(exc.err.replace(">", " ").split())
    return f"{type(exc).__name__}: " + re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(exc))


def _check_decoded(rgb, kind, declared):
    """A decoded image larger than its header promised means header and decoder disagree: refused.  Compared
    side by side with the sides sorted, since OpenCV applies a JPEG's EXIF rotation."""
    height, width = rgb.shape[:2]
    (short, long), (declared_short, declared_long) = sorted((width, height)), sorted(declared)
    if short > declared_short or long > declared_long:
        raise BadImageError(f"cannot decode image: the {kind} decoder made {width} x {height} pixels but the "
                            f"header declares {declared[0]} x {declared[1]}")


def _decode_opencv(data):
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadImageError(f"cannot decode image: {len(data)} bytes starting {data[:8]!r} are not an image "
                            f"format OpenCV can read (or the file is truncated/corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one image-sized buffer at the peak, not two


def _pillow():
    """PIL.Image, with its decompression-bomb warning made an error (once; Pillow is imported on first use)."""
    from PIL import Image
    if not getattr(_pillow, "ready", False):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _pillow.ready = True
    return Image


def _decode_pillow(data, pillow_format, declared, max_pixels):
    """The first frame as RGB (palette, transparency and alpha resolved as OpenCV would: alpha dropped)."""
    Image = _pillow()
    if max_pixels is not None and (Image.MAX_IMAGE_PIXELS or 0) < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own limit: at least the largest one asked for
    with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
        # Opening reads the header and, for a GIF, the first frame's descriptor; no pixel is allocated yet.
        # What Pillow is about to allocate is checked here, before load().
        # Pillow's own limit stands in when there is no limit of ours (its warning counts as an error, even
        # where something reset the warning filters).
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        extents = [tuple(image.size)] + [(tile[1][2], tile[1][3]) for tile in image.tile]
        for width, height in extents:
            if declared is not None and (width > declared[0] or height > declared[1]):
                raise BadImageError(f"cannot decode image: Pillow would decode this {pillow_format} file to "
                                    f"{width} x {height} but its header declares {declared[0]} x {declared[1]}")
            _check_pixels(width, height, limit, "JPEG 2000" if pillow_format == "JPEG2000" else None)
        image.load()
        if image.mode == "P":  # through the palette: what convert("RGB") gives, without its 4-byte pixels
            palette = np.zeros((256, 3), np.uint8)
            colours = np.frombuffer(bytes(image.getpalette("RGB") or ()), np.uint8).reshape(-1, 3)[:256]
            palette[:len(colours)] = colours
            return palette[np.asarray(image)]
        if image.mode == "L":
            return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)
        if image.mode.startswith("I;16"):  # 16-bit grayscale (JPEG 2000): scaled to 8 bits as OpenCV does
            gray = (np.asarray(image) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


_BASE64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/=]")


def decode_base64(b64):
    """Strict standard base64 (no URL-safe alphabet, no embedded whitespace); surrounding whitespace is ignored."""
    if isinstance(b64, str):
        try:
            b64 = b64.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError(f"invalid base64: non-ASCII character {b64[exc.start]!r} at position "
                             f"{exc.start}") from None
    elif isinstance(b64, (bytearray, memoryview)):
        b64 = bytes(b64)
    elif not isinstance(b64, bytes):
        raise TypeError(f"base64 input must be str or bytes, not {type(b64).__name__}")
    b64 = b64.strip()
    if len(b64) % 4 == 0:
        try:  # validate=True refuses every byte outside the alphabet, so the checks below run on errors only
            return _fast_b64decode(b64, validate=True)
        except binascii.Error:
            pass
    bad = _BASE64_ALPHABET.search(b64)
    if bad:
        byte = bad.group()[0]
        shown = repr(chr(byte)) if byte < 128 else f"byte 0x{byte:02x}"
        raise ValueError(f"invalid base64: character {shown} at position {bad.start()} is not in the "
                         f"standard base64 alphabet")
    if len(b64) % 4:
        raise ValueError(f"invalid base64: length {len(b64)} is not a multiple of 4 (truncated or missing padding)")
    try:  # the standard library's strict decoder is the reference, and its messages say what is wrong
        return base64.b64decode(b64, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from None


def decode_base64_image(b64, max_pixels=DEFAULT_MAX_PIXELS):
    return decode_image(decode_base64(b64), max_pixels=max_pixels)


# JPEG decoders scale by 1/2, 1/4 or 1/8 inside the inverse DCT: a fraction of the work of a full decode.
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_image_reduced(data, short_side, max_pixels=DEFAULT_MAX_PIXELS):
    """(rgb, reduction, (height, width)): a JPEG decoded at the smallest scale 1/reduction whose short side still
    has ``short_side`` pixels, with the full-size shape it stands for (transforms.resize_reduced); any other image,
    or one too small to reduce, is decode_image's (reduction 1).  The same checks and errors as decode_image."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    kind, declared = sniff(data) if isinstance(data, bytes) and data else (None, None)
    if kind == "JPEG" and declared is not None:
        width, height = declared
        for reduction, flag in _REDUCED_FLAGS:
            if min(width, height) >= short_side * reduction:
                _check_pixels(width, height, max_pixels)
                rgb = _decode_opencv_reduced(data, flag)
                shape = _full_shape(rgb, reduction, width, height)
                if shape is not None:
                    return rgb, reduction, shape
                break  # an unexpected size: let the full decode below decide
    rgb = decode_image(data, max_pixels=max_pixels)
    return rgb, 1, rgb.shape[:2]


def _decode_opencv_reduced(data, flag):
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _full_shape(rgb, reduction, width, height):
    """The full-size (height, width) of a reduced decode: libjpeg gives ceil(side / reduction), and OpenCV turns
    the image as its EXIF orientation says, which may swap the header's sides; None when the size fits neither."""
    if rgb is None:
        return None
    reduced_width, reduced_height = -(-width // reduction), -(-height // reduction)
    if rgb.shape[:2] == (reduced_height, reduced_width):
        return height, width
    if rgb.shape[:2] == (reduced_width, reduced_height):
        return width, height
    return None


def decode_base64_image_reduced(b64, short_side, max_pixels=DEFAULT_MAX_PIXELS):
    return decode_image_reduced(decode_base64(b64), short_side, max_pixels=max_pixels)
