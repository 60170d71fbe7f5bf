"""The COCO-CN style TSV format: `text \\t image_id \\t base64_image [\\t object_tags]`, one pair per line.

Rows are read as bytes so that a single non-UTF-8 line is reported by its number instead of failing the file.
Problems are yielded as `BadRow` values; the caller applies its `on_bad_row` policy (`BadRowPolicy`).
A source may be one file, a directory of `*.tsv` shards or a glob (`expand_sources`).
"""
import collections
import glob
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import BadRowError, InputError
from ..fileio import atomic_path, write_text_atomic


@dataclass
class Row:
    line: int
    text: str
    image_id: str
    image_b64: str
    tags: Optional[str] = None
    path: str = ""  # the file the row came from (shards: one of several)


@dataclass
class BadRow:
    path: str
    line: Optional[int]  # None for a whole file (an image of a folder gallery)
    reason: str

    def __str__(self):
        return f"{self.path}{'' if self.line is None else f':{self.line}'}: {self.reason}"


def read_rows(path, max_columns=4):
    """Yield a Row or a BadRow per non-blank line of `path`, in order."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: input file not found (expected a UTF-8 TSV: text, image_id, base64 image)")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            yield parse_row(raw, path, line_no, max_columns)


def parse_row(raw, path, line_no, max_columns=4):
    try:
        text_line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRow(path, line_no, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})")
    cols = text_line.split("\t")
    if not 3 <= len(cols) <= max_columns:
        want = "3" if max_columns == 3 else f"3 to {max_columns}"
        return BadRow(path, line_no, f"expected {want} tab-separated columns (text, image_id, base64 image"
                                     f"{', object tags' if max_columns > 3 else ''}), found {len(cols)}")
    text, image_id, b64 = cols[0], cols[1].strip(), cols[2].strip()
    if not text.strip():
        return BadRow(path, line_no, "empty text")
    if not image_id:
        return BadRow(path, line_no, "empty image id")
    if not b64:
        return BadRow(path, line_no, "empty image column")
    tags = cols[3] if len(cols) > 3 else None
    return Row(line_no, text, image_id, b64, tags, path)


class BadRowPolicy:
    """`error`: the first bad row raises BadRowError.  `skip`: bad rows are counted, kept for the summary and
    written to `log_path` (as `path:line: reason` lines) when `close()` is called."""

    def __init__(self, mode="error", log_path=None):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.log_path = log_path
        self.skipped = []

    def __call__(self, bad):
        if self.mode == "error":
            raise BadRowError(bad)
        self.skipped.append(bad)

    def reason_counts(self):
        def kind(reason):  # group "found 2" and "found 5", and every "bad image: ...", under one heading
            return reason.split(" (", 1)[0].split(", found", 1)[0].split(": ", 1)[0]
        return collections.Counter(kind(b.reason) for b in self.skipped)

    def close(self):
        if self.log_path and self.skipped:
            # Sorted: row-level problems are found while reading ahead, image problems at compute time.
            ordered = sorted(self.skipped, key=lambda b: (b.path, b.line or 0))
            write_text_atomic(self.log_path, "".join(f"{b}\n" for b in ordered))


def format_row(text, image_id, image_b64, tags=None):
    """One TSV line (with its newline); tabs and newlines inside a field would break the format."""
    fields = [text, image_id, image_b64] + ([tags] if tags is not None else [])
    for value in fields:
        if "\t" in value or "\n" in value or "\r" in value:
            raise ValueError(f"a TSV field may not contain a tab or newline: {value[:60]!r}")
    return "\t".join(fields) + "\n"


def write_tsv(path, rows):
    """Write (text, image_id, base64[, tags]) tuples as TSV lines, atomically; returns the number written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(format_row(*row))
            count += 1
    return count


def expand_sources(spec, what="input"):
    """A TSV file, a directory of *.tsv shards, a glob, or a list of these -> sorted list of files."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    files = []
    for item in specs:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.tsv")))
            if not found:
                raise InputError(f"{item}: directory has no *.tsv shards")
            files.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise InputError(f"{item}: no file matches this pattern")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise InputError(f"{item}: {what} not found (a TSV file, a directory of *.tsv shards, or a glob)")
    return files


def text_lines(path):
    """(line number, text without its newline, problem) of the non-blank lines of a UTF-8 file; a line that is
    not UTF-8 gives (line number, None, what is wrong) instead of failing the file."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                yield line_no, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield line_no, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
