"""Convert users' own image-text data (an image folder + JSONL/CSV captions, or Chinese-CLIP `*_imgs.tsv` +
`*_texts.jsonl`) to our TSV; bad rows are reported as `path:LINE: reason` or skipped."""
import base64
import collections
import csv
import json
import os
from dataclasses import dataclass, field

import cv2

from ..errors import ConvertError, InputError
from .images import DEFAULT_MAX_PIXELS, decode_base64, decode_image
from .tsv import BadRow, BadRowPolicy, text_lines, write_tsv

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jp2", ".pbm", ".pgm",
                    ".ppm")
JPEG_QUALITY = 90
CACHE_SIZE = 256  # encoded images kept for captions that refer to the same image again


@dataclass
class ConvertSummary:
    out_path: str
    rows: int = 0
    image_ids: set = field(default_factory=set)
    policy: BadRowPolicy = None

    @property
    def images(self):
        return len(self.image_ids)

    @property
    def skipped(self):
        return len(self.policy.skipped) if self.policy else 0

    def line(self):
        text = f"wrote {self.rows} rows ({self.images} images) to {self.out_path}; skipped {self.skipped} bad rows"
        if self.skipped:
            reasons = ", ".join(f"{n} x {reason}" for reason, n in self.policy.reason_counts().most_common(5))
            text += f" ({reasons})"
        return text


# ---- shared pieces ---------------------------------------------------------------------------------
class _RowError(Exception):
    """One input record's problem; becomes a BadRow at the record's location."""


def clean_text(value, what="caption"):
    if not isinstance(value, str):
        raise _RowError(f"{what} must be a string, got {type(value).__name__}")
    # Tabs and newlines would break the TSV row; other whitespace is kept as the user wrote it.
    text = value.replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()
    if not text:
        raise _RowError(f"empty {what}")
    return text


def clean_tags(value):
    """A list of tags or a comma-separated string -> "a,b,c" (or None when there are none)."""
    if value is None:
        return None
    if isinstance(value, str):
        items = value.replace("，", ",").split(",")
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise _RowError(f"tags must be strings, got {type(item).__name__} {item!r}")
            if "," in item or "，" in item:
                raise _RowError(f"tag {item!r} contains a comma (the tag column is comma-separated)")
            items.append(item)
    else:
        raise _RowError(f"tags must be a list of strings or a comma-separated string, got {type(value).__name__}")
    items = [" ".join(item.split()) for item in items]
    items = [item for item in items if item]
    return ",".join(items) if items else None


def clean_image_id(value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowError(f"image id must be a string or an integer, got {type(value).__name__}")
    image_id = str(value).strip()
    if not image_id:
        raise _RowError("empty image id")
    if any(char in image_id for char in "\t\r\n"):
        raise _RowError(f"image id {image_id!r} contains a tab or newline")
    return image_id


def prepare_image(data, max_side=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Validate encoded image bytes by decoding; shrink to ``max_side`` (JPEG) if larger.  -> bytes."""
    rgb = decode_image(data, max_pixels=max_pixels)
    height, width = rgb.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return data
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)  # INTER_AREA: no aliasing when shrinking
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not re-encode the image as JPEG")
    return encoded.tobytes()


class _EncodedCache:
    """path/id -> base64 for recently used images, and the outcome of every image checked so far."""

    def __init__(self, size=CACHE_SIZE):
        self.size = size
        self.recent = collections.OrderedDict()
        self.failures = {}

    def get(self, key, load):
        if key in self.failures:
            raise _RowError(self.failures[key])
        if key in self.recent:
            self.recent.move_to_end(key)
            return self.recent[key]
        try:
            encoded = base64.b64encode(load()).decode("ascii")
        except _RowError as e:
            self.failures[key] = str(e)
            raise
        self.recent[key] = encoded
        if len(self.recent) > self.size:
            self.recent.popitem(last=False)
        return encoded


def _require_file(path, what):
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")


def _write_rows(out_path, rows, summary, tags_by_image=None):
    """Stream (text, image_id, b64, tags) tuples to ``out_path`` atomically; counts go into ``summary``.  A row
    without tags of its own takes its image's from ``tags_by_image`` ({image_id: [tags]}, a tags file)."""
    tags_by_image = tags_by_image or {}

    def counted():
        for text, image_id, b64, tags in rows:
            summary.rows += 1
            summary.image_ids.add(image_id)
            yield text, image_id, b64, tags or ",".join(tags_by_image.get(image_id, ())) or None
        if summary.rows == 0:  # raised inside the write: nothing is renamed into place
            raise ConvertError(f"{out_path}: no rows to write (every input row was bad: {summary.skipped} skipped)")
    write_tsv(out_path, counted())
    return summary


# ---- a folder of images plus a captions file ------------------------------------------------------
def _jsonl_records(path):
    for line_no, text, problem in text_lines(path):
        if problem:
            yield line_no, None, problem
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            yield line_no, None, f"not valid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(record, dict):
            yield line_no, None, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield line_no, record, None


def _csv_records(path):
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            header, header_line = None, 0
            while header is None:
                try:
                    cells = next(reader)
                except StopIteration:
                    raise ConvertError(f"{path}: CSV file has no header line (expected image,caption[,tags])") from None
                if any(cell.strip() for cell in cells):
                    header, header_line = [cell.strip().lower() for cell in cells], reader.line_num
            known = {"image", "image_id", "caption", "text", "tags"}
            unknown = [name for name in header if name not in known]
            if unknown:
                raise ConvertError(f"{path}:{header_line}: unknown CSV column(s) {', '.join(map(repr, unknown))}; "
                                   f"expected image (or image_id), caption (or text) and optionally tags")
            while True:
                start = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield start, None, f"malformed CSV ({e})"
                    continue
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    yield start, None, f"expected {len(header)} CSV fields ({','.join(header)}), found {len(cells)}"
                    continue
                yield start, dict(zip(header, cells)), None
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); save the CSV as UTF-8") from None


class _ImageFolder:
    """Resolves an ``image`` reference (relative path, or id = file stem) to a file inside ``root``."""

    def __init__(self, root):
        self.root = root
        self._by_stem = None

    def _index(self):
        if self._by_stem is None:
            self._by_stem = collections.defaultdict(list)
            for directory, _, files in os.walk(self.root):
                for name in sorted(files):
                    stem, ext = os.path.splitext(name)
                    if ext.lower() in IMAGE_EXTENSIONS:
                        relative = os.path.relpath(os.path.join(directory, name), self.root)
                        self._by_stem[stem].append(relative)
                        self._by_stem[os.path.splitext(relative)[0].replace(os.sep, "/")].append(relative)
        return self._by_stem

    def resolve(self, reference):
        path = os.path.join(self.root, reference)
        if os.path.isfile(path):
            return os.path.normpath(path)
        matches = sorted(set(self._index().get(reference.replace(os.sep, "/"), ())))
        if len(matches) == 1:
            return os.path.normpath(os.path.join(self.root, matches[0]))
        if len(matches) > 1:
            raise _RowError(f"image {reference!r} is ambiguous in {self.root}: {', '.join(matches[:4])}; "
                            f"give the file name with its extension")
        raise _RowError(f"image {reference!r} not found in {self.root}")


def _pick_key(record, names, what, required=True):
    """The value of the first of ``names`` present; an empty value counts as absent unless it is all there is
    for a required field (then the caller's check reports it as empty, not as missing)."""
    given = [name for name in names if record.get(name) is not None]
    present = [name for name in given if record[name] != ""]
    if len(present) > 1 and len({json.dumps(record[name], ensure_ascii=False) for name in present}) > 1:
        raise _RowError(f"both {present[0]!r} and {present[1]!r} given with different values for the {what}")
    if present:
        return record[present[0]]
    if not required:
        return None
    if given:
        return ""
    raise _RowError(f"no {what} (expected key {' or '.join(map(repr, names))})")


def _captions_format(captions_path, captions_format):
    """jsonl or csv: as given, or from the file's extension."""
    if captions_format is None:
        ext = os.path.splitext(captions_path)[1].lower()
        captions_format = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(ext)
        if captions_format is None:
            raise ConvertError(f"{captions_path}: cannot tell the captions format from the extension {ext!r}; "
                               f"use .jsonl or .csv (or pass the format explicitly)")
    if captions_format not in ("jsonl", "csv"):
        raise ConvertError(f"captions format must be 'jsonl' or 'csv', got {captions_format!r}")
    return captions_format


def convert_folder(images_dir, captions_path, out_path, on_bad_row="error", max_side=None, bad_row_log=None,
                   captions_format=None, max_pixels=DEFAULT_MAX_PIXELS, tags_by_image=None):
    """Images folder + JSONL/CSV captions -> TSV.  Returns a ConvertSummary.  The two input styles of this module:

    * a folder of images plus a captions file, JSONL (``{"image": "cats/1.jpg", "caption": "...", "tags": [...]}``;
      ``image_id`` and ``text`` are accepted too) or CSV with a header (``image,caption[,tags]``).  ``image`` is a
      path relative to the folder, or an id that is looked up as a file stem; the output id is ``image_id`` if
      given, else the file stem.
    * Chinese-CLIP style ``*_imgs.tsv`` (``image_id \\t base64``, standard or URL-safe alphabet) plus
      ``*_texts.jsonl`` (``{"text_id": 1, "text": "...", "image_ids": [..]}``): one row per (text, image id).

    Images are checked by decoding them with OpenCV (what training and inference use); their original bytes
    are kept unless ``max_side`` asks to shrink larger ones, which are then re-encoded as JPEG (quality 90).
    Problems are reported as ``path:LINE: reason``; with ``on_bad_row="skip"`` they are counted and skipped.
    The output is written atomically.  ``tags_by_image`` ({image_id: [tags]}, e.g. data.tags.read_tags_file
    of what `tag` wrote) fills the tags column of rows whose record has no tags.
    """
    if not os.path.isdir(images_dir):
        raise InputError(f"{images_dir}: images folder not found")
    _require_file(captions_path, "captions file")
    captions_format = _captions_format(captions_path, captions_format)
    _check_max_side(max_side)
    records = _jsonl_records(captions_path) if captions_format == "jsonl" else _csv_records(captions_path)
    folder = _ImageFolder(images_dir)
    cache = _EncodedCache()
    policy = BadRowPolicy(on_bad_row, bad_row_log)
    summary = ConvertSummary(out_path, policy=policy)
    id_owner = {}  # output image id -> the file it stands for, so two files never share an id

    def load(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise _RowError(f"cannot read image {path}: {e.strerror}") from None
        try:
            return prepare_image(data, max_side, max_pixels)
        except ValueError as e:
            raise _RowError(f"image {path}: {e}") from None

    def rows():
        for line_no, record, problem in records:
            try:
                if problem:
                    raise _RowError(problem)
                text = clean_text(_pick_key(record, ("caption", "text"), "caption"))
                reference = _pick_key(record, ("image",), "image", required=False)
                given_id = _pick_key(record, ("image_id",), "image id", required=reference is None)
                given_id = None if given_id is None else clean_image_id(given_id)
                if reference is None:
                    reference = given_id
                elif isinstance(reference, int) and not isinstance(reference, bool):
                    reference = str(reference)  # a numeric id, looked up as a file stem
                elif not isinstance(reference, str):
                    raise _RowError(f"image must be a path or an id, got {type(reference).__name__}")
                path = folder.resolve(reference)
                image_id = given_id or clean_image_id(os.path.splitext(os.path.basename(path))[0])
                owner = id_owner.setdefault(image_id, path)
                if owner != path:
                    raise _RowError(f"image id {image_id!r} already stands for {owner}, not {path}; "
                                    f"give distinct image_id values")
                tags = clean_tags(record.get("tags"))
                b64 = cache.get(path, lambda: load(path))
            except _RowError as e:
                policy(BadRow(captions_path, line_no, str(e)))
                continue
            yield text, image_id, b64, tags

    try:
        return _write_rows(out_path, rows(), summary, tags_by_image)
    finally:
        policy.close()


# ---- Chinese-CLIP *_imgs.tsv + *_texts.jsonl --------------------------------------------------------
def _b64_to_bytes(b64):
    """Standard or URL-safe base64 (Chinese-CLIP writes the latter), padding optional."""
    b64 = b64.strip().replace("-", "+").replace("_", "/")
    b64 += "=" * (-len(b64) % 4)
    return decode_base64(b64)


class _ImageTsvIndex:
    """Byte offset of every ``image_id \\t base64`` line, so big image files are never held in memory."""

    def __init__(self, path, policy):
        _require_file(path, "image TSV")
        self.path = path
        self.entries = {}  # id -> (offset, line number)
        offset = 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                cols = line.split(b"\t")
                if len(cols) != 2:
                    policy(BadRow(path, line_no, f"expected 2 tab-separated columns (image_id, base64 image), "
                                                 f"found {len(cols)}"))
                    continue
                try:
                    image_id = clean_image_id(cols[0].decode("utf-8"))
                except (UnicodeDecodeError, _RowError) as e:
                    policy(BadRow(path, line_no, f"bad image id ({e})"))
                    continue
                if image_id in self.entries:
                    policy(BadRow(path, line_no, f"image id {image_id!r} already defined on line "
                                                 f"{self.entries[image_id][1]}"))
                    continue
                self.entries[image_id] = (start, line_no)
        self._handle = None

    def read(self, image_id):
        """-> (line number, base64 text) of ``image_id``; _RowError if it is not in the file."""
        if image_id not in self.entries:
            raise _RowError(f"unknown image id {image_id!r} (not in {self.path})")
        offset, line_no = self.entries[image_id]
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(offset)
        line = self._handle.readline().rstrip(b"\r\n")
        return line_no, line.split(b"\t", 1)[1].decode("ascii", "replace")

    def close(self):
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def convert_chinese_clip(imgs_tsv, texts_jsonl, out_path, on_bad_row="error", max_side=None, bad_row_log=None,
                         max_pixels=DEFAULT_MAX_PIXELS, tags_by_image=None):
    """Chinese-CLIP ``*_imgs.tsv`` + ``*_texts.jsonl`` -> TSV, one row per (text, image id); tags from
    ``tags_by_image`` ({image_id: [tags]}) when given."""
    _require_file(texts_jsonl, "texts JSONL")
    _check_max_side(max_side)
    policy = BadRowPolicy(on_bad_row, bad_row_log)
    summary = ConvertSummary(out_path, policy=policy)
    index = _ImageTsvIndex(imgs_tsv, policy)
    cache = _EncodedCache()

    def load(image_id):
        line_no, b64 = index.read(image_id)
        try:
            return prepare_image(_b64_to_bytes(b64), max_side, max_pixels)
        except ValueError as e:
            raise _RowError(f"image {image_id!r} ({imgs_tsv}:{line_no}): {e}") from None

    def rows():
        for line_no, record, problem in _jsonl_records(texts_jsonl):
            try:
                if problem:
                    raise _RowError(problem)
                text = clean_text(_pick_key(record, ("text", "caption"), "text"), what="text")
                image_ids = _pick_key(record, ("image_ids", "image_id"), "image ids")
                if not isinstance(image_ids, list):
                    image_ids = [image_ids]
                image_ids = [clean_image_id(value) for value in image_ids]
            except _RowError as e:
                policy(BadRow(texts_jsonl, line_no, str(e)))
                continue
            for image_id in image_ids:
                try:
                    b64 = cache.get(image_id, lambda: load(image_id))
                except _RowError as e:
                    policy(BadRow(texts_jsonl, line_no, str(e)))
                    continue
                yield text, image_id, b64, None

    try:
        return _write_rows(out_path, rows(), summary, tags_by_image)
    finally:
        index.close()
        policy.close()


def _check_max_side(max_side):
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16):
        raise ConvertError(f"max_side must be an integer of at least 16 pixels, got {max_side!r}")
