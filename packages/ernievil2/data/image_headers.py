"""Image formats and their pixel dimensions read from the file header, without decoding any pixels, so that a
decompression bomb (a small file that decodes to gigabytes) is refused before a byte of it is allocated.

Recognised: JPEG, PNG, GIF, BMP, WebP, TIFF (and BigTIFF), JPEG 2000 (JP2 and raw codestream), PNM/PAM/PFM,
Sun raster and Radiance HDR -- every format the OpenCV build decodes except OpenEXR, which OpenCV itself
disables by default and which is refused here.

Where a file can state its size twice (a GIF's screen and its frames, a JPEG 2000 header box and its codestream,
repeated TIFF tags, a WebP canvas and its bitstream, several JPEG frame headers) the size is the largest of all
statements, so that whichever one a decoder believes, it cannot make more pixels than were checked.
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
    """The largest start-of-frame before the first scan.  libjpeg refuses a second SOF, so the largest is what
    it decodes or it decodes nothing; like libjpeg, bytes between markers are skipped."""
    position, length, sizes = 2, len(data), []
    while position + 4 <= length:
        if data[position] != 0xFF:
            position = data.find(b"\xff", position)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header may follow
            break
        segment_length = struct.unpack(">H", data[position + 2:position + 4])[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > length:
                break
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            sizes.append((width, height))
        position += 2 + segment_length
    return _largest(sizes)


def _largest(sizes):
    sizes = [size for size in sizes if size is not None]
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


def _gif(data):
    """The logical screen grown to every frame descriptor's extent: Pillow decodes a frame drawn outside the
    screen (a 1x1 screen with a 10000 x 10000 frame) at the frame's extent."""
    if len(data) < 13:
        return None
    width, height, flags = struct.unpack("<HHB", data[6:11])
    position, length = 13 + _gif_palette_bytes(flags), len(data)
    while position < length:
        block = data[position]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            position = _skip_gif_sub_blocks(data, position + 2)
        elif block == 0x2C:  # image descriptor, local palette, LZW code size, data sub-blocks
            if position + 10 > length:
                break
            frame = data[position + 1:position + 10]
            left, top, frame_width, frame_height, frame_flags = struct.unpack("<HHHHB", frame)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            position = _skip_gif_sub_blocks(data, position + 10 + _gif_palette_bytes(frame_flags) + 1)
        else:  # Pillow skips an unknown byte and reads on, so this reader does too
            position += 1
    return width, height


def _gif_palette_bytes(flags):
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_gif_sub_blocks(data, position):
    while position < len(data):
        size = data[position]
        position += 1 + size
        if size == 0:
            break
    return position


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
    """The largest of the VP8X canvas, each VP8/VP8L bitstream's own size and each animation frame's extent."""
    position, length, sizes = 12, len(data), []
    while position + 8 <= length:
        chunk, size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        payload = data[position + 8:position + 8 + min(size, 32)]
        if chunk == b"VP8X" and len(payload) >= 10:
            sizes.append((1 + int.from_bytes(payload[4:7], "little"), 1 + int.from_bytes(payload[7:10], "little")))
        elif chunk == b"VP8L" and len(payload) >= 5:
            bits = int.from_bytes(payload[1:5], "little")
            sizes.append((1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)))
        elif chunk == b"VP8 " and len(payload) >= 10:
            width, height = struct.unpack("<HH", payload[6:10])
            sizes.append((width & 0x3FFF, height & 0x3FFF))
        elif chunk == b"ANMF" and len(payload) >= 12:
            x, y = 2 * int.from_bytes(payload[0:3], "little"), 2 * int.from_bytes(payload[3:6], "little")
            sizes.append((x + 1 + int.from_bytes(payload[6:9], "little"),
                          y + 1 + int.from_bytes(payload[9:12], "little")))
        position += 8 + size + (size & 1)  # chunks are padded to an even size
    return _largest(sizes)


def _tiff(data):
    """ImageWidth (256) and ImageLength (257) of the first IFD, the page OpenCV decodes.  A tag that appears
    twice counts at its largest (libtiff keeps the first, a naive reader the last), and a tiled file's
    TileWidth (322) / TileLength (323) count too: OpenCV allocates a whole tile even for a 1 x 1 image."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43  # BigTIFF: 8-byte offsets and counts
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
        if tag in (256, 257, 322, 323):
            value = entry[12:] if big else entry[8:]
            # SHORT (3), LONG (4) or LONG8 (16), stored in the first bytes of the value field.
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                return None
            found[tag] = max(found.get(tag, 0), struct.unpack(order + fmt, value[:struct.calcsize(fmt)])[0])
    if 256 not in found or 257 not in found:
        return None
    return max(found[256], found.get(322, 0)), max(found[257], found.get(323, 0))


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
    """JP2: the larger of the header box's `ihdr` (what Pillow sizes the image from) and the codestream's SIZ
    (what OpenJPEG decodes), found by walking the boxes -- `ihdr` bytes elsewhere (an xml box) mean nothing.
    A raw codestream: its SIZ."""
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k_size(data, 0)
    sizes = []
    for kind, start, end in _jp2_boxes(data, 0, len(data)):
        if kind == b"jp2h":
            sizes += [_jp2_ihdr_size(data, s, e) for k, s, e in _jp2_boxes(data, start, end) if k == b"ihdr"]
        elif kind == b"jp2c":
            sizes.append(_j2k_size(data, start))
            break
    return _largest(sizes)


def _jp2_boxes(data, position, end):
    """(type, payload start, payload end) of each box in data[position:end]."""
    while position + 8 <= end:
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        header = 8
        if length == 1:  # a 64-bit length follows the type
            length, header = struct.unpack(">Q", data[position + 8:position + 16])[0], 16
        elif length == 0:  # the last box: it runs to the end
            length = end - position
        if length < header:
            return
        yield kind, position + header, min(position + length, end)
        position += length


def _jp2_ihdr_size(data, start, end):
    if end - start < 8:
        return None
    height, width = struct.unpack(">II", data[start:start + 8])
    return width, height


def _j2k_size(data, at):
    """Image size of a codestream starting at `at`: SOC, SIZ marker, then Xsiz, Ysiz, XOsiz, YOsiz."""
    if data[at:at + 4] != b"\xff\x4f\xff\x51" or len(data) < at + 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[at + 8:at + 24])
    if xsiz <= xosiz or ysiz <= yosiz:
        return None
    return xsiz - xosiz, ysiz - yosiz


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
            try:
                return name, read_size(data)
            except (struct.error, ValueError, IndexError, OverflowError):  # truncated or nonsense: unsized
                return name, None
    if data[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR", None
    return None, None


def header_size(data):
    """(width, height) read from the file header without decoding pixels, or None."""
    return sniff(data)[1]
