"""Image decoding: encoded bytes (or base64) -> uint8 HWC RGB, with the pixel limit checked before decoding."""
import base64
import binascii
import io
import re

import cv2
import numpy as np

from .image_headers import ACCEPTED, sniff

try:  # SIMD base64 (a core requirement; the standard library's decoder is ~50x slower on a 100 KB image column)
    from pybase64 import b64decode as _fast_b64decode
except ImportError:  # pragma: no cover - an environment installed before pybase64 was required
    _fast_b64decode = base64.b64decode

# Same default as PIL's decompression-bomb limit (about 89.5 MP, i.e. 1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485


def _check_pixels(width, height, max_pixels):
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"image is {width} x {height} = {width * height} pixels, over the limit of {max_pixels}")


def decode_image(data, max_pixels=DEFAULT_MAX_PIXELS):
    """Encoded image bytes -> uint8 HWC RGB, always 3 channels (as cv2.IMREAD_COLOR gives them).

    Grayscale is replicated to 3 channels and an alpha channel is dropped, exactly like the official
    reader's cv2 call; GIF (which this OpenCV cannot read) decodes its first frame through Pillow.
    ``max_pixels`` (None disables it) is checked on the header before decoding, and on the decoded size.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"image data must be bytes, not {type(data).__name__}")
    if not data:
        raise ValueError("cannot decode image: no data (0 bytes)")
    kind, declared = sniff(data)
    if kind is None or kind == "OpenEXR":
        raise ValueError(f"cannot decode image: {len(data)} bytes starting {data[:8]!r} are not an image format "
                         f"accepted here ({ACCEPTED})")
    if declared is not None:
        _check_pixels(*declared, max_pixels)
    elif max_pixels is not None:  # the size cannot be known without decoding: refuse rather than risk it
        raise ValueError(f"cannot decode image: its {kind} header is truncated or corrupt (not an image format "
                         f"this reader can size)")
    rgb = _decode_gif(data) if kind == "GIF" else _decode_opencv(data)
    _check_pixels(rgb.shape[1], rgb.shape[0], max_pixels)
    return rgb


def _decode_opencv(data):
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"cannot decode image ({len(data)} bytes): OpenCV error {exc}") from None
    if bgr is None:
        raise ValueError(f"cannot decode image: {len(data)} bytes starting {data[:8]!r} are not an image "
                         f"format OpenCV can read (or the file is truncated/corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_gif(data):
    """The first frame of a GIF, as RGB (palette and transparency resolved by Pillow)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image: a GIF of {len(data)} bytes that Pillow cannot read "
                         f"(truncated/corrupt?): {exc}") from None


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
