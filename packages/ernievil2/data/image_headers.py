"""Image formats and their pixel dimensions read from the file header, without decoding any pixels, so that a
decompression bomb (a small file that decodes to gigabytes) is refused before a byte of it is allocated.

Recognised: JPEG, PNG, GIF, BMP, WebP, TIFF (and BigTIFF), JPEG 2000 (JP2 and raw codestream), PNM/PAM/PFM,
Sun raster and Radiance HDR -- every format the OpenCV build decodes except OpenEXR, which OpenCV itself
disables by default and which is refused here.
"""
import re
import struct

_PNM_TOKEN = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\d+)")


def _png(data):
    # Signature, then the IHDR chunk: length(4) "IHDR" width(4) height(4), big-endian.
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _jpeg(data):
    """Walk the marker segments up to the first start-of-frame and read its height/width."""
    position, length = 2, len(data)
    while position + 4 <= length:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            position += 2
            continue
        segment_length = struct.unpack(">H", data[position + 2:position + 4])[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > length:
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        position += 2 + segment_length
    return None


def _gif(data):
    return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None


def _bmp(data):
    if len(data) < 26:
        return None
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:  # BITMAPCOREHEADER: 16-bit width and height
        return struct.unpack("<HH", data[18:22])
    if header >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # negative height means a top-down bitmap
    return None


def _webp(data):
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff(data):
    """ImageWidth (256) and ImageLength (257) of the first IFD, the page OpenCV decodes."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43  # BigTIFF: 8-byte offsets and counts
    try:
        if big:
            offset = struct.unpack(order + "Q", data[8:16])[0]
            count = struct.unpack(order + "Q", data[offset:offset + 8])[0]
            first, entry_size = offset + 8, 20
        else:
            offset = struct.unpack(order + "I", data[4:8])[0]
            count = struct.unpack(order + "H", data[offset:offset + 2])[0]
            first, entry_size = offset + 2, 12
        found = {}
        for i in range(min(count, 4096)):
            entry = data[first + i * entry_size:first + (i + 1) * entry_size]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):
                value = entry[12:] if big else entry[8:]
                # SHORT (3), LONG (4) or LONG8 (16), stored in the first bytes of the value field.
                fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if fmt is None:
                    return None
                found[tag] = struct.unpack(order + fmt, value[:struct.calcsize(fmt)])[0]
        return (found[256], found[257]) if len(found) == 2 else None
    except (struct.error, KeyError):
        return None


def _pnm(data):
    """P1-P6: width and height after the magic, with # comments; P7 (PAM): WIDTH / HEIGHT lines; PF/Pf (PFM)."""
    if data[:2] == b"P7":
        head = data[:4096]
        width, height = re.search(rb"\nWIDTH\s+(\d+)", head), re.search(rb"\nHEIGHT\s+(\d+)", head)
        return (int(width.group(1)), int(height.group(1))) if width and height else None
    first = _PNM_TOKEN.match(data, 2)
    second = first and _PNM_TOKEN.match(data, first.end())
    return (int(first.group(1)), int(second.group(1))) if second else None


def _sun_raster(data):
    return struct.unpack(">II", data[4:12]) if len(data) >= 12 else None


def _radiance(data):
    """The resolution line after the header's blank line, e.g. `-Y 480 +X 640` (height first)."""
    head = data[:65536]
    end = head.find(b"\n\n")
    if end < 0:
        return None
    line = head[end + 2:head.find(b"\n", end + 2)]
    match = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", line)
    if not match or match.group(2) == match.group(5):
        return None
    first, second = int(match.group(3)), int(match.group(6))
    return (second, first) if match.group(2) == b"Y" else (first, second)


def _jpeg2000(data):
    """JP2: the `ihdr` box (height, width); raw codestream: the SIZ marker (image size minus its offset)."""
    if data[:4] == b"\xff\x4f\xff\x51":
        if len(data) < 24:
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
        return xsiz - xosiz, ysiz - yosiz
    at = data.find(b"ihdr", 0, 4096)
    if at < 0 or len(data) < at + 12:
        return None
    height, width = struct.unpack(">II", data[at + 4:at + 12])
    return width, height


# (name, test on the first bytes, size reader); the first match decides.
_FORMATS = (
    ("PNG", lambda d: d[:8] == b"\x89PNG\r\n\x1a\n", _png),
    ("JPEG", lambda d: d[:2] == b"\xff\xd8", _jpeg),
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("BMP", lambda d: d[:2] == b"BM", _bmp),
    ("WebP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp),
    ("TIFF", lambda d: d[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff),
    ("JPEG 2000", lambda d: d[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51", _jpeg2000),
    ("PNM", lambda d: len(d) > 2 and d[:1] == b"P" and d[1:2] in b"1234567Ff" and d[2:3].isspace(), _pnm),
    ("Sun raster", lambda d: d[:4] == b"\x59\xa6\x6a\x95", _sun_raster),
    ("Radiance HDR", lambda d: d[:10] == b"#?RADIANCE" or d[:6] == b"#?RGBE", _radiance),
)
ACCEPTED = ", ".join(name for name, _, _ in _FORMATS)


def sniff(data):
    """(format name, (width, height) or None when the header is unreadable), or (None, None) for bytes of no
    recognised format.  OpenEXR is reported as "OpenEXR" with no size (refused by decode_image)."""
    for name, matches, read_size in _FORMATS:
        if matches(data):
            return name, read_size(data)
    if data[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR", None
    return None, None


def header_size(data):
    """(width, height) read from the file header without decoding pixels, or None."""
    return sniff(data)[1]
