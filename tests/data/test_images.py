"""Image decoding, official eval preprocessing (golden pixel statistics) and training augmentation."""
import base64
import io
import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from ernievil2.data.image_headers import header_size, sniff
from ernievil2.data.images import DEFAULT_MAX_PIXELS, decode_base64_image, decode_image
from ernievil2.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_train,
    preprocess_eval,
    resize_short_side,
    to_grayscale,
)


def encode(rgb, ext, params=()):
    ok, buffer = cv2.imencode(ext, rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb, list(params))
    assert ok
    return buffer.tobytes()


def colourful(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def denormalize(chw):
    """Back to HWC in [0, 1]."""
    return chw.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN


# ---- golden ----------------------------------------------------------------------------------------
def test_eval_matches_official_pixel_statistics(golden_dir):
    with open(os.path.join(golden_dir, "golden.coco.tsv"), encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    with open(os.path.join(golden_dir, "official_pixels.jsonl"), encoding="utf-8") as handle:
        expected = [json.loads(line) for line in handle]
    assert len(rows) == len(expected) == 16
    for (_, image_id, b64), stats in zip(rows, expected):
        assert stats["image_id"] == image_id
        pixels = preprocess_eval(decode_base64_image(b64), size=224)
        assert pixels.dtype == np.float32 and pixels.shape == tuple(stats["shape"][1:])
        assert pixels.flags.c_contiguous
        # float32 rounding over 150k values moves the sums by ~0.02; a one-pixel shift moves them by >= 20.
        total = float(pixels.sum(dtype=np.float64))
        abs_total = float(np.abs(pixels).sum(dtype=np.float64))
        assert abs(total - stats["sum"]) < 1e-6 * stats["abs_sum"] + 0.05, image_id
        assert abs(abs_total - stats["abs_sum"]) < 1e-6 * stats["abs_sum"] + 0.05, image_id
        np.testing.assert_allclose(pixels.reshape(-1)[:8], stats["first8"], rtol=0, atol=1e-5, err_msg=image_id)
        np.testing.assert_allclose(pixels.mean(axis=(1, 2), dtype=np.float64), stats["channel_means"],
                                   rtol=0, atol=1e-6, err_msg=image_id)


# ---- eval geometry ---------------------------------------------------------------------------------
def test_short_side_equal_to_size_is_not_resized():
    rgb = colourful(224, 300)
    assert resize_short_side(rgb, 224) is rgb
    # Centre crop offset ceil(76 / 2) = 38 on the long side.
    expected = ((rgb[:, 38:262] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(preprocess_eval(rgb), expected, atol=2e-6)


def test_resize_long_side_formula():
    assert resize_short_side(colourful(300, 300), 224).shape == (224, 225, 3)  # square: height branch
    assert resize_short_side(colourful(375, 500), 224).shape == (224, 299, 3)  # int(298.67) + 1
    assert resize_short_side(colourful(500, 333), 224).shape == (337, 224, 3)  # int(336.34) + 1
    assert resize_short_side(colourful(3, 500), 224).shape == (224, 37334, 3)  # upscaling too


@pytest.mark.parametrize("height, width", [(1, 1), (3, 500), (500, 3), (1, 2), (223, 223)])
def test_tiny_and_thin_images(height, width):
    rgb = colourful(height, width)
    pixels = preprocess_eval(rgb)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32 and np.isfinite(pixels).all()
    augmented = augment_train(rgb, np.random.default_rng(0))
    assert augmented.shape == (3, 224, 224) and np.isfinite(augmented).all()


def test_single_pixel_becomes_constant_image():
    pixels = preprocess_eval(np.array([[[10, 200, 30]]], dtype=np.uint8))
    expected = (np.array([10, 200, 30]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(pixels, np.broadcast_to(expected[:, None, None], (3, 224, 224)), atol=2e-6)


def test_extreme_aspect_ratio_is_refused_before_resizing():
    with pytest.raises(ValueError, match="aspect ratio too extreme"):
        preprocess_eval(np.zeros((1, 400_000, 3), dtype=np.uint8))


def test_rejects_wrong_arrays():
    with pytest.raises(ValueError, match="uint8 HWC RGB"):
        preprocess_eval(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 HWC RGB"):
        preprocess_eval(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        preprocess_eval(np.zeros((0, 10, 3), dtype=np.uint8))
    # Views with negative strides are accepted (copied for cv2).
    rgb = colourful(240, 320)
    np.testing.assert_array_equal(preprocess_eval(rgb[:, ::-1]), preprocess_eval(np.ascontiguousarray(rgb[:, ::-1])))


# ---- decoding ---------------------------------------------------------------------------------------
def test_decode_returns_rgb_order():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    for ext in (".png", ".bmp"):
        decoded = decode_image(encode(rgb, ext))
        assert decoded.shape == (4, 6, 3) and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, rgb)


def test_grayscale_png_and_jpeg_become_three_equal_channels():
    gray = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    decoded = decode_image(encode(gray, ".png"))
    assert decoded.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)
    decoded = decode_image(encode(gray, ".jpg"))
    assert decoded.shape == (20, 30, 3)
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_alpha_is_dropped_without_compositing():
    rgba = np.random.default_rng(2).integers(0, 256, (12, 9, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(9, dtype=np.uint8)[None, :] * 30  # mostly transparent pixels
    bgra = rgba[..., [2, 1, 0, 3]]
    decoded = decode_image(encode(bgra, ".png"))
    np.testing.assert_array_equal(decoded, rgba[..., :3])


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    deep = np.full((5, 5, 3), 0x1234, dtype=np.uint16)
    decoded = decode_image(encode(deep, ".png"))
    assert decoded.dtype == np.uint8 and (decoded == 0x12).all()


def test_non_image_bytes_and_empty_input():
    with pytest.raises(ValueError, match="not an image format"):
        decode_image(b"hello world, certainly not a picture")
    with pytest.raises(ValueError, match="not an image format"):
        decode_image(encode(colourful(10, 10), ".png")[:40])  # truncated
    with pytest.raises(ValueError, match="no data"):
        decode_image(b"")
    with pytest.raises(TypeError, match="must be bytes"):
        decode_image("not bytes")


def test_base64_strictness():
    good = base64.b64encode(encode(colourful(8, 8), ".png"))
    assert decode_base64_image(good).shape == (8, 8, 3)
    assert decode_base64_image(good.decode("ascii") + "\n").shape == (8, 8, 3)  # trailing newline of a TSV field
    with pytest.raises(ValueError, match=r"character '\$' at position 3 is not in the standard base64 alphabet"):
        decode_base64_image("iVB$" + good.decode("ascii")[4:])
    with pytest.raises(ValueError, match="character '-' at position"):
        decode_base64_image(base64.urlsafe_b64encode(b"\xfb\xff" * 30))  # URL-safe alphabet is refused
    with pytest.raises(ValueError, match="length 5 is not a multiple of 4"):
        decode_base64_image("abcde")
    with pytest.raises(ValueError, match="invalid base64: .*padding"):
        decode_base64_image("ab=c")
    with pytest.raises(ValueError, match="byte 0xff at position 2"):
        decode_base64_image(b"ab\xffd")
    with pytest.raises(ValueError, match="non-ASCII character"):
        decode_base64_image("ａｂｃｄ")
    with pytest.raises(ValueError, match="not an image format"):
        decode_base64_image(base64.b64encode(b"plain text, valid base64"))


# ---- pixel limit --------------------------------------------------------------------------------------
def fake_png_header(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64  # no pixel data at all


def fake_jpeg_header(width, height):
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\x00" * 32


def test_huge_images_are_refused_from_the_header():
    # The bytes hold no pixel data, so only a header check can produce this message (decoding would fail).
    with pytest.raises(ValueError, match=r"^image is 100000 x 90000 = 9000000000 pixels, over the limit of 89478485$"):
        decode_image(fake_png_header(100_000, 90_000))
    with pytest.raises(ValueError, match=r"^image is 60000 x 50000 = 3000000000 pixels, over the limit of 89478485$"):
        decode_image(fake_jpeg_header(60_000, 50_000))
    assert DEFAULT_MAX_PIXELS == 89_478_485


def assert_limit_is_exactly_the_image(data, ext):
    """A 53 x 37 image decodes at a limit of its pixels (4 times them for JPEG 2000, see test_hostile_images) and
    is refused one pixel below, with the message naming the size."""
    cost = 4 if ext == ".jp2" else 1
    counted = r", counted 4 times \(JPEG 2000 is decoded through 32-bit samples\):" if cost > 1 else ","
    with pytest.raises(ValueError, match=rf"^image is 53 x 37 = 1961 pixels{counted} over the limit of "
                                         rf"{1961 * cost - 1}$"):
        decode_image(data, max_pixels=1961 * cost - 1)
    assert decode_image(data, max_pixels=1961 * cost).shape == (37, 53, 3)


@pytest.mark.parametrize("ext, params", [(".png", ()), (".jpg", ()), (".bmp", ()), (".webp", ()),
                                         (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossless VP8L
                                         (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))])
def test_header_size_matches_real_files(ext, params):
    data = encode(colourful(37, 53), ext, params)
    assert header_size(data) == (53, 37)
    assert_limit_is_exactly_the_image(data, ext)


def test_pixel_limit_after_decoding_for_other_formats():
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8
    assert header_size(gif) == (640, 480)
    tiff = encode(colourful(40, 50), ".tiff")
    assert header_size(tiff) == (50, 40)  # TIFF too is sized from its header now
    with pytest.raises(ValueError, match=r"^image is 50 x 40 = 2000 pixels, over the limit of 1999$"):
        decode_image(tiff, max_pixels=1999)
    # max_pixels=None disables the limit: the fake header then reaches the decoder, which finds no pixels.
    with pytest.raises(ValueError, match="not an image format"):
        decode_image(fake_png_header(100_000, 90_000), max_pixels=None)
    assert decode_image(tiff, max_pixels=None).shape == (40, 50, 3)


# ---- augmentation ----------------------------------------------------------------------------------
NO_RANDOM_OPS = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def test_augmentation_is_deterministic_per_seed():
    rgb = colourful(240, 320)
    first = augment_train(rgb, np.random.default_rng(123))
    again = augment_train(rgb, np.random.default_rng(123))
    other = augment_train(rgb, np.random.default_rng(124))
    assert first.shape == (3, 224, 224) and first.dtype == np.float32 and first.flags.c_contiguous
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 0.05
    # One generator gives a fresh view per call.
    rng = np.random.default_rng(5)
    assert not np.array_equal(augment_train(rgb, rng), augment_train(rgb, rng))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        augment_train(rgb, 123)


def test_forced_flip_mirrors_the_same_crop():
    rgb = colourful(240, 320)
    plain = augment_train(rgb, np.random.default_rng(9), flip_p=0.0, **NO_RANDOM_OPS)
    flipped = augment_train(rgb, np.random.default_rng(9), flip_p=1.0, **NO_RANDOM_OPS)
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
    # Jitter and blur commute with a mirror, so with them on the views still mirror each other.
    options = dict(jitter_p=1.0, gray_p=0.0, blur_p=1.0)
    plain = augment_train(rgb, np.random.default_rng(9), flip_p=0.0, **options)
    flipped = augment_train(rgb, np.random.default_rng(9), flip_p=1.0, **options)
    np.testing.assert_allclose(flipped, plain[:, :, ::-1], atol=1e-4)


def test_crop_and_flip_statistics():
    """Identify each view's crop offset and flip exactly; offsets cover the range, flips are ~50%."""
    rgb = colourful(16, 40, seed=3)  # short side == size: no resize, horizontal offsets 0..24
    candidates = {}
    for left in range(25):
        crop = rgb[:, left:left + 16]
        for flip in (False, True):
            view = crop[:, ::-1] if flip else crop
            candidates[(left, flip)] = view
    flips, offsets = 0, set()
    for seed in range(200):
        out = augment_train(rgb, np.random.default_rng(seed), size=16, **NO_RANDOM_OPS)
        restored = np.rint(denormalize(out) * 255.0)
        matches = [key for key, view in candidates.items() if np.abs(restored - view).max() < 0.01]
        assert len(matches) == 1, f"seed {seed}: {matches}"
        left, flip = matches[0]
        flips += flip
        offsets.add(left)
    assert 70 <= flips <= 130  # binomial(200, 0.5): mean 100, sd ~7
    assert min(offsets) == 0 and max(offsets) == 24 and len(offsets) >= 20


def test_grayscale_forced_and_its_frequency():
    rgb = colourful(64, 80)
    gray = denormalize(augment_train(rgb, np.random.default_rng(4), size=32, gray_p=1.0))
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)
    np.testing.assert_allclose(gray[..., 1], gray[..., 2], atol=1e-5)
    count = 0
    for seed in range(200):
        view = denormalize(augment_train(rgb, np.random.default_rng(seed), size=16))
        count += np.abs(view[..., 0] - view[..., 2]).max() < 1e-4
    assert 20 <= count <= 60  # binomial(200, 0.2): mean 40, sd ~5.7


def test_forced_blur_smooths():
    rgb = colourful(224, 224)
    sharp = augment_train(rgb, np.random.default_rng(2), **NO_RANDOM_OPS)
    blurred = augment_train(rgb, np.random.default_rng(2), jitter_p=0.0, gray_p=0.0, blur_p=1.0)

    def roughness(chw):
        return np.abs(np.diff(chw, axis=2)).mean()

    assert roughness(blurred) < 0.8 * roughness(sharp)
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), sharp.mean(axis=(1, 2)), atol=0.02)


def test_forced_jitter_changes_colours_within_range():
    rgb = colourful(224, 224)
    base = augment_train(rgb, np.random.default_rng(8), **NO_RANDOM_OPS)
    jittered = augment_train(rgb, np.random.default_rng(8), jitter_p=1.0, gray_p=0.0, blur_p=0.0)
    assert np.abs(jittered - base).mean() > 0.01
    restored = denormalize(jittered)
    assert restored.min() >= -1e-5 and restored.max() <= 1 + 1e-5  # clamped like torchvision


# ---- colour ops (torchvision float semantics) ----------------------------------------------------------
def test_colour_ops():
    image = np.random.default_rng(6).random((8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(adjust_brightness(image, 0.5), image * 0.5, atol=1e-6)
    np.testing.assert_allclose(adjust_brightness(image, 3.0), np.minimum(image * 3.0, 1.0), atol=1e-6)
    mean_luma = (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean()
    np.testing.assert_allclose(adjust_contrast(image, 0.0), np.full_like(image, mean_luma), atol=1e-6)
    np.testing.assert_allclose(adjust_contrast(image, 1.0), image, atol=1e-6)
    np.testing.assert_allclose(adjust_saturation(image, 0.0), to_grayscale(image), atol=1e-6)
    np.testing.assert_allclose(adjust_saturation(image, 1.0), image, atol=1e-6)
    np.testing.assert_allclose(to_grayscale(np.array([[[1.0, 0.0, 0.0]]], dtype=np.float32)), [[[0.299] * 3]],
                               atol=1e-6)


@pytest.mark.parametrize("shift, expected", [(1 / 3, [0, 1, 0]), (-1 / 3, [0, 0, 1]), (0.5, [0, 1, 1]),
                                             (-0.5, [0, 1, 1]), (1 / 6, [1, 1, 0]), (0.0, [1, 0, 0])])
def test_hue_rotation_of_pure_red(shift, expected):
    # A full-size tile: OpenCV's vectorised HSV path (used for large rows) mishandles negative hues,
    # which a tiny array running the scalar path would not reveal.
    pixels = np.tile(np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]], dtype=np.float32), (64, 32, 1))
    rotated = adjust_hue(pixels, shift)
    np.testing.assert_allclose(rotated[:, 0::2], np.broadcast_to(expected, (64, 32, 3)), atol=1e-5)
    np.testing.assert_allclose(rotated[:, 1::2], 0.5, atol=1e-5)  # grey has no hue


# ---- every format is sized from its header before decoding -----------------------------------------
@pytest.mark.parametrize("ext", [".tiff", ".jp2", ".ppm", ".pgm", ".pbm", ".pam", ".ras", ".hdr", ".pfm"])
def test_every_opencv_format_is_sized_from_its_header(ext):
    rgb = colourful(37, 53)
    image = rgb.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else rgb[..., 0] if ext in (".pgm", ".pbm") else rgb
    data = encode(image, ext)
    kind, size = sniff(data)
    assert kind is not None and size == (53, 37), (ext, kind, size)
    assert_limit_is_exactly_the_image(data, ext)


def bilevel_tiff_header(width, height, big_endian=False):
    """A 1-bit TIFF that declares width x height but carries a few bytes of (CCITT G4) data: what a small file
    decoding to gigabytes looks like."""
    o = ">" if big_endian else "<"
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 1), (259, 3, 1, 4), (262, 3, 1, 0),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack(o + "H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(o + "HHI", tag, kind, count) + (struct.pack(o + "HH", value, 0) if kind == 3
                                                           else struct.pack(o + "I", value))
    head = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(o + "I", 8)
    return head + ifd + struct.pack(o + "I", 0) + b"\x00" * 16


@pytest.mark.parametrize("big_endian", [False, True])
def test_a_tiff_bomb_is_refused_before_any_decoding(monkeypatch, big_endian):
    data = bilevel_tiff_header(30000, 30000, big_endian)
    assert header_size(data) == (30000, 30000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("the decoder must not be reached"))
    with pytest.raises(ValueError, match=r"^image is 30000 x 30000 = 900000000 pixels, over the limit of 89478485$"):
        decode_image(data)


def test_gif_decodes_its_first_frame():
    from PIL import Image
    frames = [Image.fromarray(np.full((6, 9, 3), colour, np.uint8)) for colour in ((200, 30, 30), (20, 40, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    assert header_size(data) == (9, 6)
    rgb = decode_image(data)
    assert rgb.shape == (6, 9, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - (200, 30, 30)).max() <= 8  # the first frame, through the palette
    with pytest.raises(ValueError, match="over the limit of 53"):
        decode_image(data, max_pixels=53)
    with pytest.raises(ValueError, match="GIF .* Pillow cannot read"):
        decode_image(data[:30])


@pytest.mark.parametrize("colours, transparency", [(2, None), (16, 0), (256, 7)])
def test_gif_pixels_equal_pillows_rgb_conversion(colours, transparency):
    """The palette lookup that replaced convert("RGB") (a 4-byte-per-pixel copy) gives the same pixels,
    transparent index included (its palette colour: no compositing, as for PNG alpha)."""
    from PIL import Image
    rng = np.random.default_rng(colours)
    frame = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)).quantize(colours)
    buffer = io.BytesIO()
    frame.save(buffer, format="GIF", **({} if transparency is None else {"transparency": transparency}))
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)


def test_unrecognised_and_refused_formats_name_the_accepted_ones():
    with pytest.raises(ValueError, match="not an image format accepted here .*PNG, JPEG, GIF"):
        decode_image(b"\x76\x2f\x31\x01" + b"\x00" * 64)  # OpenEXR: OpenCV disables it by default
    with pytest.raises(ValueError, match="TIFF header is truncated or corrupt"):
        decode_image(b"II*\0" + struct.pack("<I", 4000))  # IFD offset past the end
