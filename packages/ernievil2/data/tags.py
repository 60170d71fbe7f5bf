"""Object tags outside the pairs TSV: the tags file (`image_id \\t tag1,tag2,...`, one image per line) that the
trainer (data.tags_file) and convert-data (--tags) read and `tag` writes, and the tag vocabulary `tag` chooses
from (one name per line, `#` comments; a built-in Chinese list of common objects and scene elements)."""
import os

from ..errors import InputError
from .prompts import split_tags
from .tsv import text_lines

BUILTIN_VOCABULARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "object_vocab_zh.txt")
TAGS_FILE_SEPARATOR = ","  # split_tags also accepts the full-width comma


def read_tags_file(path, what="tags file"):
    """`image_id \\t tag1,tag2,...` lines -> {image_id: [tags]} (an image listed with no tags maps to [])."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found (expected image_id \\t tags lines)")
    tags, first_line = {}, {}
    for line_no, text, problem in text_lines(path):
        cols = [] if problem else text.split("\t")
        if problem or len(cols) != 2:
            raise InputError(f"{path}:{line_no}: {problem or 'expected 2 tab-separated columns (image_id, tags), '}"
                             f"{'' if problem else f'found {len(cols)}'}")
        image_id = cols[0].strip()
        if not image_id:
            raise InputError(f"{path}:{line_no}: empty image id")
        if image_id in first_line:
            raise InputError(f"{path}:{line_no}: image id {image_id!r} already listed on line {first_line[image_id]}")
        first_line[image_id] = line_no
        tags[image_id] = split_tags(cols[1])
    return tags


def format_tags_line(image_id, tags):
    """One line of a tags file (with its newline)."""
    return f"{image_id}\t{TAGS_FILE_SEPARATOR.join(tags)}\n"


def read_tag_vocabulary(path=None):
    """[(line number, name)] of a tag vocabulary file (None: the built-in one).  Blank lines and `#` comments
    (whole-line or trailing) are skipped; a name holding a comma or a tab (the tags file's separators), a
    duplicate, a non-UTF-8 line or a file without names is an error naming the file and line."""
    path = path or BUILTIN_VOCABULARY
    if not os.path.isfile(path):
        raise InputError(f"{path}: tag vocabulary not found (one tag name per line, # comments)")
    entries, seen = [], {}
    for line_no, text, problem in text_lines(path):
        if problem:
            raise InputError(f"{path}:{line_no}: {problem}")
        name = text.split("#", 1)[0].strip()
        if not name:
            continue
        if "\t" in name or "," in name or "，" in name:
            raise InputError(f"{path}:{line_no}: a tag name may not contain a tab or a comma: {name!r}")
        if name in seen:
            raise InputError(f"{path}:{line_no}: tag {name!r} already given on line {seen[name]}")
        seen[name] = line_no
        entries.append((line_no, name))
    if not entries:
        raise InputError(f"{path}: no tag names (one per line; # starts a comment)")
    return entries
