"""Gallery sources for `embed`, `zeroshot` and `tag`: images from a folder (recursive) or a TSV (`image_id \\t
base64`, Chinese-CLIP's `*_imgs.tsv`; with a label column first for zero-shot accuracy; or a training pairs file
`text \\t image_id \\t base64 [\\t tags]`, each image once), texts from a text file (one query per line) or JSONL
(`text_id`, `text`).  Items are yielded in a fixed order with where they came from;
problems are BadRow values for the caller's bad-row policy."""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from .row_index import RowIndex
from .tsv import BadRow

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ImageItem:
    id: str
    source: str             # the image file, or the TSV holding the row
    line: Optional[int]     # the TSV row's line number (None for a file)
    path: Optional[str]     # a file to read (folder galleries) ...
    b64: Optional[str]      # ... or the base64 image of a TSV row
    label: Optional[str] = None

    @property
    def where(self):
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass
class TextItem:
    id: str
    where: str
    text: str


def image_source(src, labelled=False):
    """The images of a folder (relative paths as ids, sorted) or a TSV; labelled=True also accepts
    `label \\t image_id \\t base64` rows (every row the same number of columns as the first); unlabelled, a
    pairs file (3 or 4 columns, the training format) gives each image id once, at its first row."""
    if os.path.isdir(src):
        return FolderImages(src)
    if not os.path.isfile(src):
        raise InputError(f"{src}: images source not found (a folder of images or an image_id \\t base64 TSV)")
    if not labelled and TsvImages.first_line_columns(src) in (3, 4):
        return PairImages(src)
    return TsvImages(src, labelled)


def text_source(src):
    """A UTF-8 text file (one query per line; id = its line number; blank lines are skipped) or JSONL (`.jsonl`:
    objects with `text_id` and `text`)."""
    if not os.path.isfile(src):
        raise InputError(f"{src}: texts source not found (a text file, one query per line, or JSONL)")
    return JsonlTexts(src) if src.lower().endswith((".jsonl", ".json", ".ndjson")) else TextLines(src)


def image_items(src, labelled=False):
    """ImageItem / BadRow per image of image_source(src), in order."""
    return image_source(src, labelled).items()


def text_items(src):
    """TextItem / BadRow per query of text_source(src), in order."""
    return text_source(src).items()


class FolderImages:
    """Every image file under a folder, in sorted relative-path order.  A source has `count`, `items(start,
    stop)` (ImageItem / TextItem / BadRow values of positions [start, stop)) and a content `stamp`."""

    def __init__(self, root):
        found = []
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            found += [os.path.join(folder, name) for name in files if name.lower().endswith(IMAGE_SUFFIXES)]
        if not found:
            raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
        self.root = root
        self.files = sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep))
        self.count = len(self.files)

    def items(self, start=0, stop=None):
        for path in self.files[start:stop]:
            yield ImageItem(id=os.path.relpath(path, self.root).replace(os.sep, "/"), source=path, line=None,
                            path=path, b64=None)

    def stamp(self):
        digest = hashlib.sha1()
        for path in self.files:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return [os.path.abspath(self.root), self.count, digest.hexdigest()]


class _Rows:
    """A source read through the row index (random access by position, line numbers for messages)."""

    def __init__(self, path):
        self.path = path
        self.index = RowIndex(path, what="source")
        self.count = len(self.index)

    def lines(self, start, stop):
        """(line number, text, problem) of positions [start, stop)."""
        for _, line, raw in self.index.iter_raw(start, stop):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
            try:
                yield line, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield line, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"

    def stamp(self):
        st = os.stat(self.path)
        return [os.path.abspath(self.path), st.st_size, st.st_mtime_ns]


class TsvImages(_Rows):
    def __init__(self, path, labelled=False):
        super().__init__(path)
        line, text, _ = next(self.lines(0, 1))
        self.columns = len((text or "").split("\t"))
        if self.columns not in ((2, 3) if labelled else (2,)):
            want = "image_id \\t base64" + (" (or label \\t image_id \\t base64)" if labelled else
                                            " (or text \\t image_id \\t base64 [\\t tags] pairs)")
            raise InputError(f"{path}:{line}: expected {want}, found {self.columns} tab-separated columns")

    @staticmethod
    def first_line_columns(path):
        """Tab-separated columns of the first non-blank line (0 for an empty file)."""
        rows = _Rows(path)
        _, text, _ = next(rows.lines(0, 1))
        return len(text.split("\t")) if text else 0

    def items(self, start=0, stop=None):
        for line_no, text, problem in self.lines(start, self.count if stop is None else stop):
            if problem:
                yield BadRow(self.path, line_no, problem)
                continue
            cols = text.split("\t")
            if len(cols) != self.columns:
                yield BadRow(self.path, line_no, f"expected {self.columns} tab-separated columns like line 1, "
                                                 f"found {len(cols)}")
                continue
            label = cols[0].strip() if self.columns == 3 else None
            image_id, b64 = cols[-2].strip(), cols[-1].strip()
            if not image_id or not b64 or (self.columns == 3 and not label):
                what = "label" if self.columns == 3 and not label else "image id" if not image_id else "image column"
                yield BadRow(self.path, line_no, f"empty {what}")
                continue
            yield ImageItem(id=image_id, source=self.path, line=line_no, path=None, b64=b64, label=label)


class PairImages(_Rows):
    """The images of a pairs file (`text \\t image_id \\t base64 [\\t tags]`, several captions per image): each
    image id once, at its first row, in file order.  Unreadable rows stay in the order as BadRow values."""

    def __init__(self, path):
        super().__init__(path)
        self.rows, seen = [], set()  # file row of each item
        for position, (_, text, problem) in enumerate(self.lines(0, self.count)):
            cols = text.split("\t") if text else []
            image_id = cols[1].strip() if 3 <= len(cols) <= 4 else None
            if problem or not image_id or image_id not in seen:
                self.rows.append(position)
                seen.add(image_id)
        self.count = len(self.rows)

    def items(self, start=0, stop=None):
        for position in self.rows[start:stop]:
            line_no, text, problem = next(self.lines(position, position + 1))
            cols = [] if problem else text.split("\t")
            if problem or not 3 <= len(cols) <= 4:
                yield BadRow(self.path, line_no, problem or f"expected 3 or 4 tab-separated columns (text, "
                                                            f"image_id, base64 image[, tags]), found {len(cols)}")
                continue
            image_id, b64 = cols[1].strip(), cols[2].strip()
            if not image_id or not b64:
                yield BadRow(self.path, line_no, f"empty {'image id' if not image_id else 'image column'}")
                continue
            yield ImageItem(id=image_id, source=self.path, line=line_no, path=None, b64=b64)


class TextLines(_Rows):
    def items(self, start=0, stop=None):
        for line_no, text, problem in self.lines(start, self.count if stop is None else stop):
            yield (BadRow(self.path, line_no, problem) if problem
                   else TextItem(str(line_no), f"{self.path}:{line_no}", text))


class JsonlTexts(_Rows):
    def items(self, start=0, stop=None):
        for line_no, text, problem in self.lines(start, self.count if stop is None else stop):
            yield _jsonl_text(self.path, line_no, text, problem)


def _jsonl_text(path, line_no, text, problem):
    if problem:
        return BadRow(path, line_no, problem)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return BadRow(path, line_no, f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(record, dict) or "text" not in record or "text_id" not in record:
        return BadRow(path, line_no, "expected a JSON object with text_id and text")
    query = record["text"]
    if not isinstance(query, str) or not query.strip():
        return BadRow(path, line_no, "text must be a non-empty string")
    return TextItem(str(record["text_id"]), f"{path}:{line_no}", query)
