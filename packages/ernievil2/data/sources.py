"""Gallery sources for `embed` and `zeroshot`: images from a folder (recursive) or a TSV (`image_id \\t base64`,
Chinese-CLIP's `*_imgs.tsv`; with a label column first for zero-shot accuracy), texts from a text file (one
query per line) or JSONL (`text_id`, `text`).  Items are yielded in a fixed order with where they came from;
problems are BadRow values for the caller's bad-row policy."""
import json
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from .tsv import BadRow, text_lines

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


def image_items(src, labelled=False):
    """ImageItem / BadRow per image of a folder (relative paths as ids, sorted) or a TSV.  labelled=True also
    accepts `label \\t image_id \\t base64` rows (every row the same number of columns as the first)."""
    if os.path.isdir(src):
        return _folder_items(src)
    if not os.path.isfile(src):
        raise InputError(f"{src}: images source not found (a folder of images or an image_id \\t base64 TSV)")
    return _tsv_image_items(src, labelled)


def _folder_items(root):
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(folder, name) for name in files if name.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
    for path in sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep)):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        yield ImageItem(id=rel, source=path, line=None, path=path, b64=None)


def _tsv_image_items(path, labelled):
    columns = None
    for line_no, text, problem in text_lines(path):
        if problem:
            yield BadRow(path, line_no, problem)
            continue
        cols = text.split("\t")
        if columns is None:
            columns = len(cols)
            if columns not in ((2, 3) if labelled else (2,)):
                want = "image_id \\t base64" + (" (or label \\t image_id \\t base64)" if labelled else "")
                raise InputError(f"{path}:{line_no}: expected {want}, found {columns} tab-separated columns"
                                 + ("; a text \\t image_id \\t base64 pairs file is run_infer.sh's input"
                                    if columns >= 3 and not labelled else ""))
        if len(cols) != columns:
            yield BadRow(path, line_no, f"expected {columns} tab-separated columns like line 1, found {len(cols)}")
            continue
        label = cols[0].strip() if columns == 3 else None
        image_id, b64 = cols[-2].strip(), cols[-1].strip()
        if not image_id or not b64 or (columns == 3 and not label):
            what = "label" if columns == 3 and not label else "image id" if not image_id else "image column"
            yield BadRow(path, line_no, f"empty {what}")
            continue
        yield ImageItem(id=image_id, source=path, line=line_no, path=None, b64=b64, label=label)


def text_items(src):
    """TextItem / BadRow per query: a UTF-8 text file (one per line; id = its line number; blank lines are
    skipped) or JSONL (`.jsonl`: objects with `text_id` and `text`)."""
    if not os.path.isfile(src):
        raise InputError(f"{src}: texts source not found (a text file, one query per line, or JSONL)")
    if src.lower().endswith((".jsonl", ".json", ".ndjson")):
        return _jsonl_text_items(src)
    return _plain_text_items(src)


def _plain_text_items(path):
    for line_no, text, problem in text_lines(path):
        yield BadRow(path, line_no, problem) if problem else TextItem(str(line_no), f"{path}:{line_no}", text)


def _jsonl_text_items(path):
    for line_no, text, problem in text_lines(path):
        if problem:
            yield BadRow(path, line_no, problem)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            yield BadRow(path, line_no, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(record, dict) or "text" not in record or "text_id" not in record:
            yield BadRow(path, line_no, "expected a JSON object with text_id and text")
            continue
        query = record["text"]
        if not isinstance(query, str) or not query.strip():
            yield BadRow(path, line_no, "text must be a non-empty string")
            continue
        yield TextItem(str(record["text_id"]), f"{path}:{line_no}", query)
