"""Images whose header and decoder disagree, and broken files that make decoders raise unusual exceptions: each
is refused before its pixels are allocated, or becomes a BadImageError (a bad row, a 4xx) -- never a crash, a
traceback or gigabytes.  Files are built from bytes in crafted_images."""
import io
import os
import struct
import subprocess
import sys
import textwrap

import crafted_images as crafted
import cv2
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from ernievil2.data import images
from ernievil2.data.image_headers import header_size
from ernievil2.data.images import DEFAULT_MAX_PIXELS, decode_image
from ernievil2.errors import BadImageError, InputError

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "packages")


def run_python(code, env_drop=()):
    """Run `code` in a fresh interpreter with this checkout's package and crafted_images importable."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = os.pathsep.join([PACKAGES, HERE, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def real_jp2():
    ok, buffer = cv2.imencode(".jp2", np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert ok
    return buffer.tobytes()


def refused_without_decoding(monkeypatch, data, match="over the limit"):
    """decode_image refuses `data` from its header: neither decoder is reached."""
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("OpenCV must not be reached"))
    monkeypatch.setattr(images, "_decode_pillow", lambda *a: pytest.fail("Pillow must not be reached"))
    with pytest.raises(BadImageError, match=match):
        decode_image(data)


# ---- GIF: frames outside the logical screen ----------------------------------------------------------
def test_a_gif_frame_outside_its_1x1_screen_is_refused_without_allocating_it():
    """13000 x 13000 is under twice Pillow's limit, so Pillow only warns and fills the frame (169 MB) if asked
    to decode it; the header's 1x1 screen must not be believed."""
    data = crafted.gif(screen=(1, 1), frames=((0, 0, 13000, 13000),), lzw=b"\x02\x01\x2c\x00", transparent=True)
    assert len(data) <= 48
    assert header_size(data) == (13000, 13000)
    proc = run_python("""
        import resource
        import crafted_images as crafted
        from ernievil2.data.images import DEFAULT_MAX_PIXELS, decode_image
        data = crafted.gif(screen=(1, 1), frames=((0, 0, 13000, 13000),), lzw=b"\\x02\\x01\\x2c\\x00", transparent=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for max_pixels in (DEFAULT_MAX_PIXELS, None):  # with no limit, Pillow's own still refuses it
            try:
                decode_image(data, max_pixels=max_pixels)
                print("decoded")
            except ValueError as e:
                print(type(e).__name__, e)
        print("growth_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert all(line.startswith("BadImageError") for line in lines[:2]), lines
    assert float(lines[-1].split()[1]) < 50, lines  # MB of peak resident memory gained


@pytest.mark.parametrize("frames, expected", [
    (((0, 0, 5, 5), (8, 9, 30, 40)), (38, 49)),      # the second frame reaches past the screen
    (((65535, 65535, 1, 1),), (65536, 65536)),        # a 1x1 frame at the far corner: Pillow makes 65536^2
    (((2, 3, 4, 5),), (10, 10)),                      # inside the screen: the screen counts
])
def test_gif_size_is_the_screen_grown_to_every_frame(frames, expected):
    data = crafted.gif(screen=(10, 10), frames=frames)
    assert header_size(data) == expected
    # Pillow skips unknown bytes between blocks; so does the size reader.
    assert header_size(data.replace(b"!\xf9", b"\x99!\xf9", 1)) == expected


def test_a_gif_frame_at_a_far_offset_is_a_bad_image_even_without_a_limit():
    """Pillow raises DecompressionBombError (not an OSError) here, which used to escape as a traceback."""
    data = crafted.gif(screen=(4, 4), frames=((65535, 65535, 1, 1),))
    with pytest.raises(BadImageError, match="65536 x 65536"):
        decode_image(data)
    with pytest.raises(BadImageError):
        decode_image(data, max_pixels=None)


BROKEN_GIFS = {
    "truncated LZW data": crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),), lzw=b"\x02\x05\x84\x1d\x81\x7a",
                                      trailer=False),
    "LZW code size 0": crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),), lzw=b"\x00\x02\x44\x01\x00"),
    "LZW code size 13": crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),), lzw=b"\x0d\x02\x44\x01\x00"),
    "no palette": crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),), palette=False),
    "palette cut short": crafted.gif(screen=(4, 4))[:16],
    "zero-size frame": crafted.gif(screen=(4, 4), frames=((0, 0, 0, 0),)),
    "zero-width frame": crafted.gif(screen=(4, 4), frames=((0, 0, 0, 4),)),
    "zero-size screen and frame": crafted.gif(screen=(0, 0), frames=((0, 0, 0, 0),)),
    "no frame": crafted.gif(screen=(4, 4), frames=()),
    "descriptor cut short": crafted.gif(screen=(4, 4))[:30],
    "extension cut short": crafted.gif(screen=(4, 4))[:22],
}


@pytest.mark.parametrize("kind", list(BROKEN_GIFS))
def test_broken_gifs_are_bad_images(kind):
    with pytest.raises(BadImageError, match="^(cannot decode image|image is)"):
        decode_image(BROKEN_GIFS[kind], max_pixels=None)


# ---- TIFF -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("large_first", [True, False])
def test_duplicate_tiff_size_tags_count_at_their_largest(monkeypatch, large_first):
    """libtiff keeps the first of a repeated tag; whichever order, the larger size is what gets checked."""
    if large_first:
        data = crafted.tiff_duplicate_size_tags(small=(4, 4), large=(20000, 20000))
    else:
        data = crafted.tiff_gray(4, 4, extra=[(256, 4, 1, 20000), (257, 4, 1, 20000)])
    assert header_size(data) == (20000, 20000)
    refused_without_decoding(monkeypatch, data)


def test_a_tiled_tiff_counts_its_tile_size():
    """OpenCV allocates a whole tile (RGBA) even for a 4x4 image: 16000 x 16000 tiles cost 1 GB."""
    n = 10
    entries = [(256, 4, 1, 4), (257, 4, 1, 4), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
               (322, 4, 1, 16000), (323, 4, 1, 16000), (324, 4, 1, crafted.tiff_tail_offset(n)), (325, 4, 1, 64)]
    data = crafted.tiff(entries, tail=b"\x01" * 64)
    assert header_size(data) == (16000, 16000)
    with pytest.raises(BadImageError, match="16000 x 16000 = 256000000 pixels, over the limit"):
        decode_image(data)


def test_a_plain_tiff_still_decodes():
    rgb = decode_image(crafted.tiff_gray(16, 16))
    assert rgb.shape == (16, 16, 3) and (rgb[..., 0] == np.arange(256, dtype=np.uint8).reshape(16, 16)).all()


# ---- JPEG 2000 --------------------------------------------------------------------------------------
def test_jp2_ihdr_bytes_outside_the_header_box_mean_nothing():
    data = crafted.jp2_patched(real_jp2(), decoy_ihdr=(1, 1))
    assert header_size(data) == (50, 40)
    assert decode_image(data).shape == (40, 50, 3)
    with pytest.raises(BadImageError, match="over the limit of 1999"):
        decode_image(data, max_pixels=1999)


def test_jp2_pixels_count_four_times_against_the_limit():
    """OpenJPEG holds 32-bit samples while decoding: a JPEG 2000 under the pixel limit may still need 4x the
    memory the limit stands for, so its pixels count 4 times."""
    data = real_jp2()  # 50 x 40 = 2000 pixels
    with pytest.raises(BadImageError, match=r"2000 pixels, counted 4 times \(JPEG 2000 is decoded through 32-bit "
                                            r"samples\): over the limit of 7999"):
        decode_image(data, max_pixels=7999)
    assert decode_image(data, max_pixels=8000).shape == (40, 50, 3)
    png = cv2.imencode(".png", np.zeros((40, 50, 3), np.uint8))[1].tobytes()
    assert decode_image(png, max_pixels=2000).shape == (40, 50, 3)  # other formats: one pixel counts once


def test_jp2_decodes_to_the_same_pixels_as_opencv():
    data = real_jp2()
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(data), expected)


def test_jp2_header_box_and_codestream_that_disagree_are_sized_at_the_larger_and_never_crash():
    """OpenCV 4.10's OpenJPEG reader dies with SIGSEGV on these, so they run in a child process."""
    real = real_jp2()
    assert header_size(crafted.jp2_patched(real, siz_size=(20000, 20000))) == (20000, 20000)
    assert header_size(crafted.jp2_patched(real, ihdr_size=(20000, 20000))) == (20000, 20000)
    assert header_size(crafted.jp2_patched(real, ihdr_size=(5, 4))) == (50, 40)
    proc = run_python("""
        import cv2, numpy as np
        import crafted_images as crafted
        from ernievil2.data.images import decode_image
        ok, buffer = cv2.imencode(".jp2", np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
        real = buffer.tobytes()
        cases = [crafted.jp2_patched(real, ihdr_size=(5, 4)), crafted.jp2_patched(real, ihdr_size=(60, 50)),
                 crafted.jp2_patched(real, siz_size=(60, 50))]
        cases += [real[:n] for n in range(0, len(real), 7)]  # every truncation
        for data in cases:
            try:
                print(decode_image(data, max_pixels=None).shape)
            except ValueError as e:
                print(type(e).__name__)
    """)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 + len(range(0, len(real), 7))
    assert set(lines) == {"BadImageError"}, set(lines)


# ---- neighbours: PNG, WebP, BMP, JPEG, raw codestream ---------------------------------------------------------
def test_png_size_comes_from_the_leading_ihdr_only():
    """libpng refuses a second IHDR ("out of place") and any chunk before IHDR, so neither can enlarge it."""
    assert header_size(crafted.png_gray(4, 4)) == (4, 4)
    two = crafted.png_gray(4, 4, extra_ihdr=(30000, 30000))
    assert header_size(two) == (4, 4)
    with pytest.raises(BadImageError, match="OpenCV can read"):
        decode_image(two)
    late = crafted.png_gray(4, 4, first=(b"tEXt", b"a\0b"))
    with pytest.raises(BadImageError, match="PNG header is truncated or corrupt"):
        decode_image(late)


@pytest.mark.parametrize("canvas, bitstream", [((4, 4), (12000, 9000)), ((12000, 9000), (4, 4))])
def test_webp_counts_the_larger_of_canvas_and_bitstream(monkeypatch, canvas, bitstream):
    data = crafted.webp_vp8x(canvas, bitstream)
    assert header_size(data) == (12000, 9000)
    refused_without_decoding(monkeypatch, data)


def test_bmp_heights_of_either_sign():
    assert decode_image(crafted.bmp(4, -4)).shape == (4, 4, 3)  # top-down
    assert decode_image(crafted.bmp(4, 4)).shape == (4, 4, 3)
    assert header_size(crafted.bmp(4, -2 ** 31, pixel_bytes=16)) == (4, 2 ** 31)
    with pytest.raises(BadImageError, match="over the limit"):
        decode_image(crafted.bmp(4, -2 ** 31, pixel_bytes=16))
    with pytest.raises(BadImageError, match="OpenCV can read"):
        decode_image(crafted.bmp(4, -4, pixel_bytes=8))  # pixels cut short


@pytest.mark.parametrize("sizes", [((4, 4), (12000, 9000)), ((12000, 9000), (4, 4))])
def test_jpeg_with_two_frame_headers_counts_the_larger(monkeypatch, sizes):
    data = crafted.jpeg_two_frames(*sizes)
    assert header_size(data) == (12000, 9000)
    refused_without_decoding(monkeypatch, data)
    # libjpeg skips stray bytes before a marker; a frame header behind them still counts
    stray = data[:2] + b"\x00\x00" + data[2:]
    assert header_size(stray) == (12000, 9000)


def test_a_raw_codestream_with_offsets_past_its_size_is_unsized():
    data = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + bytes.fromhex("00000004 00000004 00000010 00000010")
    assert header_size(data) is None
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_image(data)


def test_header_readers_never_raise():
    # a PNM with a number of 5000 digits: int() refuses it (Python's digit limit); the reader reports no size
    assert header_size(b"P5\n" + b"9" * 5000 + b" 4\n255\n") is None
    assert header_size(b"II*\0" + b"\xff" * 4) is None
    assert header_size(b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0\0\0\x01jp2h" + b"\xff" * 8) is None


# ---- every decoder failure is a BadImageError --------------------------------------------------------
@pytest.mark.parametrize("exc", [cv2.error("boom"), MemoryError(), IndexError("i"), EOFError("e"),
                                 SystemError("s"), RuntimeError("r"), OverflowError("o"), KeyError("k")])
def test_any_opencv_failure_is_a_bad_image(monkeypatch, exc):
    def failing(*_):
        raise exc
    monkeypatch.setattr(cv2, "imdecode", failing)
    with pytest.raises(BadImageError, match="^cannot decode image") as err:
        decode_image(crafted.png_gray(4, 4))
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)


PILLOW_FAILURES = [Image.DecompressionBombError("bomb"), UnidentifiedImageError("what"), SyntaxError("s"),
                   EOFError("e"), struct.error("s"), IndexError("i"), TypeError("t"), ZeroDivisionError("z"),
                   MemoryError(), KeyError("k")]


@pytest.mark.parametrize("exc", PILLOW_FAILURES, ids=lambda e: type(e).__name__)
def test_any_pillow_failure_is_a_bad_image(monkeypatch, exc):
    def failing(*_, **__):
        raise exc
    monkeypatch.setattr(Image, "open", failing)
    with pytest.raises(BadImageError, match="^cannot decode image: .*a GIF file of 43 bytes"):
        decode_image(crafted.gif(screen=(4, 4), frames=((0, 0, 4, 4),)))


def test_pillow_limit_stands_in_when_there_is_no_limit_of_ours(monkeypatch):
    """Pillow's own limit as a second line: it follows the largest limit asked for, and without a limit of ours
    an image over it (where Pillow would only warn) is refused."""
    small = io.BytesIO()
    Image.new("P", (12, 12)).save(small, format="GIF")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImageError, match="144 pixels, over the limit of 100|DecompressionBombWarning"):
        decode_image(small.getvalue(), max_pixels=None)
    assert decode_image(small.getvalue(), max_pixels=144).shape == (12, 12, 3)
    assert Image.MAX_IMAGE_PIXELS == 144  # raised to the largest limit asked for
    assert decode_image(small.getvalue(), max_pixels=None).shape == (12, 12, 3)


def test_a_decoded_image_larger_than_its_header_promised_is_refused(monkeypatch):
    data = crafted.png_gray(6, 5)
    monkeypatch.setattr(images, "sniff", lambda _: ("PNG", (5, 5)))
    with pytest.raises(BadImageError, match="decoder made 6 x 5 pixels but the header declares 5 x 5"):
        decode_image(data)


def test_decoder_messages_carry_no_source_paths(monkeypatch):
    def failing(*_):
        return cv2.cvtColor(np.zeros((2, 2, 5), np.uint8), cv2.COLOR_BGR2RGB)  # a real cv2.error
    with pytest.raises(cv2.error, match="/opencv/modules/"):
        failing()
    monkeypatch.setattr(cv2, "imdecode", failing)
    with pytest.raises(BadImageError, match="OpenCV error: Invalid number of channels") as err:
        decode_image(crafted.png_gray(4, 4))
    assert "/opencv/" not in str(err.value) and "\n" not in str(err.value)


# ---- OpenCV's own pixel limit -----------------------------------------------------------------------
def test_opencv_gets_its_pixel_limit_before_any_module_imports_cv2():
    """A PNG header of 10000 x 10000 (over the default limit, under OpenCV's built-in 2^30) fed straight to
    cv2.imdecode, after importing a package module that imports cv2 itself."""
    proc = run_python("""
        import os, struct, zlib
        import numpy as np
        import ernievil2.data.transforms  # imports cv2
        import cv2
        print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
        ihdr = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
        png = (b"\\x89PNG\\r\\n\\x1a\\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
               + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + struct.pack(">I", 2) + b"IDAT\\x78\\x9c" + b"\\0" * 4)
        try:
            cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
            print("no limit")
        except cv2.error as e:
            print("limit" if "CV_IO_MAX_IMAGE_PIXELS" in str(e) else "other error")
        from ernievil2.data.images import decode_image
        try:
            decode_image(png, max_pixels=10**9)  # our limit allows it; OpenCV's refuses, and says how to raise it
        except ValueError as e:
            print(type(e).__name__, e)
    """, env_drop=("OPENCV_IO_MAX_IMAGE_PIXELS",))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == [str(DEFAULT_MAX_PIXELS), "limit"]
    assert lines[2].startswith("BadImageError") and "OPENCV_IO_MAX_IMAGE_PIXELS=89478485" in lines[2], lines


def test_a_pixel_limit_the_user_set_for_opencv_is_kept():
    from ernievil2.runtime import limit_image_decoders
    assert limit_image_decoders({"OPENCV_IO_MAX_IMAGE_PIXELS": "500000000"}) == "500000000"
    environ = {}
    assert limit_image_decoders(environ) == str(DEFAULT_MAX_PIXELS) == environ["OPENCV_IO_MAX_IMAGE_PIXELS"]


def test_a_jpeg_turned_by_its_exif_orientation_is_not_taken_for_a_disagreement():
    """OpenCV applies EXIF orientation 6 (turn 90 degrees): the decoded 37 x 53 of a 53 x 37 header is fine."""
    rgb = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd
    turned = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif + jpeg[2:]
    assert header_size(turned) == (53, 37)
    assert decode_image(turned).shape == (53, 37, 3)
