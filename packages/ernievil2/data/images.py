"""Image decoding: encoded bytes (or base64) -> uint8 HWC RGB, with the pixel limit checked before decoding."""
import base64
import binascii
import io
import re

import cv2
import numpy as np

from .image_headers import ACCEPTED, sniff

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
    bad = _BASE64_ALPHABET.search(b64)
    if bad:
        byte = bad.group()[0]
        shown = repr(chr(byte)) if byte < 128 else f"byte 0x{byte:02x}"
        raise ValueError(f"invalid base64: character {shown} at position {bad.start()} is not in the "
                         f"standard base64 alphabet")
    if len(b64) % 4:
        raise ValueError(f"invalid base64: length {len(b64)} is not a multiple of 4 (truncated or missing padding)")
    try:
        return base64.b64decode(b64, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from None


def decode_base64_image(b64, max_pixels=DEFAULT_MAX_PIXELS):
    return decode_image(decode_base64(b64), max_pixels=max_pixels)
