"""Hostile and broken image files built from bytes (no binaries in the repository): files whose header and
decoder disagree, and files that make decoders raise unusual exceptions.  Each returns `bytes`."""
import struct
import zlib


# ---- GIF ---------------------------------------------------------------------------------------------
def gif(screen=(1, 1), frames=((0, 0, 1, 1),), lzw=b"\x02\x02\x44\x01\x00", palette=True, trailer=True,
        transparent=False):
    """A GIF89a with a 2-colour global palette and one image descriptor (left, top, width, height) per frame,
    each after a graphic control extension (colour 0 transparent if asked: Pillow then fills the whole frame
    before decoding it) and followed by `lzw` (minimum code size byte, sub-blocks, terminator)."""
    flags = 0x80 if palette else 0
    data = b"GIF89a" + struct.pack("<HHBBB", *screen, flags, 0, 0)
    if palette:
        data += b"\0\0\0\xff\xff\xff"
    for left, top, width, height in frames:
        data += b"!\xf9\x04" + (b"\x01" if transparent else b"\x00") + b"\x00\x00\x00\x00"  # graphic control
        data += b"," + struct.pack("<HHHHB", left, top, width, height, 0) + lzw
    return data + (b";" if trailer else b"")


# ---- TIFF --------------------------------------------------------------------------------------------
def tiff(entries, big_endian=False, tail=b"\x00" * 16):
    """A classic TIFF whose first IFD holds `entries` [(tag, type, count, value)] in the given order (SHORT and
    LONG values inline); `tail` follows the IFD (its offset is available as `tiff_tail_offset(len(entries))`)."""
    o = ">" if big_endian else "<"
    ifd = struct.pack(o + "H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack(o + "HH", value, 0) if kind == 3 else struct.pack(o + "I", value)
        ifd += struct.pack(o + "HHI", tag, kind, count) + packed
    head = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(o + "I", 8)
    return head + ifd + struct.pack(o + "I", 0) + tail


def tiff_tail_offset(n_entries):
    return 8 + 2 + 12 * n_entries + 4


def tiff_gray(width, height, extra=(), first=()):
    """An uncompressed 8-bit grayscale TIFF of width x height whose pixels are all stored; `first` entries go
    before the regular ones and `extra` after them (duplicates of ImageWidth/ImageLength, tiles...)."""
    n = len(first) + 8 + len(extra)
    entries = [*first, (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, tiff_tail_offset(n)), (278, 4, 1, height), (279, 4, 1, width * height), *extra]
    return tiff(entries, tail=bytes(range(256)) * (width * height // 256 + 1))


def tiff_duplicate_size_tags(small=(4, 4), large=(20000, 20000)):
    """ImageWidth/ImageLength first say `large`, then again `small`: libtiff keeps the first pair."""
    first = [(256, 4, 1, large[0]), (257, 4, 1, large[1])]
    return tiff_gray(*small, first=first)


# ---- JPEG 2000 ---------------------------------------------------------------------------------------
def box(kind, payload):
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def jp2_patched(real, ihdr_size=None, siz_size=None, decoy_ihdr=None):
    """A real JP2 file (signature, ftyp, jp2h, jp2c as OpenCV writes them) with its jp2h/ihdr size and/or its
    codestream SIZ size replaced; `decoy_ihdr` (a size) puts a fake `ihdr` in an xml box BEFORE the header box,
    where a byte search finds it first."""
    at = real.index(b"jp2h") - 4
    head, rest = bytearray(real[:at]), bytearray(real[at:])
    if ihdr_size is not None:
        i = rest.index(b"ihdr") + 4
        rest[i:i + 8] = struct.pack(">II", ihdr_size[1], ihdr_size[0])
    if siz_size is not None:
        i = rest.index(b"\xff\x4f\xff\x51") + 8  # SOC, SIZ marker, Lsiz, Rsiz: then Xsiz, Ysiz
        rest[i:i + 8] = struct.pack(">II", *siz_size)
        rest[i + 16:i + 24] = struct.pack(">II", *siz_size)  # one tile the size of the image
    decoy = b""
    if decoy_ihdr is not None:
        decoy = box(b"xml ", b"ihdr" + struct.pack(">II", decoy_ihdr[1], decoy_ihdr[0]) + b"    ")
    return bytes(head) + decoy + bytes(rest)


# ---- PNG, WebP, BMP, JPEG ----------------------------------------------------------------------------
def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(chunks):
    body = b"".join(png_chunk(kind, payload) for kind, payload in chunks)
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def png_ihdr(width, height):
    return b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)


def png_gray(width, height, extra_ihdr=None, first=None):
    """A valid 8-bit grayscale PNG; `extra_ihdr` (a size) adds a second IHDR after the first; `first` (a chunk)
    goes before IHDR."""
    rows = b"".join(b"\0" + bytes(width) for _ in range(height))
    chunks = [png_ihdr(width, height)]
    if extra_ihdr:
        chunks.append(png_ihdr(*extra_ihdr))
    if first:
        chunks.insert(0, first)
    return png(chunks + [(b"IDAT", zlib.compress(rows))])


def webp_vp8x(canvas, bitstream):
    """A VP8X file declaring `canvas` whose (lossless) VP8L image chunk says `bitstream`."""
    vp8x = struct.pack("<I", 0) + (canvas[0] - 1).to_bytes(3, "little") + (canvas[1] - 1).to_bytes(3, "little")
    bits = (bitstream[0] - 1) | ((bitstream[1] - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    chunks = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def bmp(width, height, bits=24, pixel_bytes=None):
    """A BITMAPINFOHEADER bitmap (negative height: top-down) with `pixel_bytes` of pixel data (all stored by
    default)."""
    stride = (width * bits // 8 + 3) & ~3
    if pixel_bytes is None:
        pixel_bytes = stride * abs(height)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + pixel_bytes, 0, 0, 14 + 40) + info + b"\x00" * pixel_bytes


def jpeg_two_frames(first, second):
    """SOI, then two baseline SOF markers declaring `first` then `second` (width, height), then SOS + EOI."""
    def sof(width, height):
        payload = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
        return b"\xff\xc0" + struct.pack(">H", 2 + len(payload)) + payload
    sos = b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof(*first) + sof(*second) + sos + b"\x00" * 8 + b"\xff\xd9"
