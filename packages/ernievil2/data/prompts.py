"""The texts the model reads besides captions: the object-tag prompt of the training views, and the prompt
templates and class labels of zero-shot classification."""
import os
from typing import Sequence

from ..errors import InputError
from .tsv import text_lines

# Object-tag view of an image: this prompt + the tags joined by TAG_SEPARATOR ("图片中包含红色汽车, 蓝天").
TAG_PROMPT = "图片中包含"
TAG_SEPARATOR = ", "


def tag_text(tags: Sequence[str], prompt: str = TAG_PROMPT, separator: str = TAG_SEPARATOR) -> str:
    """The object-tag view's text, e.g. ``"图片中包含红色汽车, 蓝天, 绿树"``."""
    return prompt + separator.join(tags)


def split_tags(text):
    """A tag column (`红色汽车,蓝天` or with full-width commas) -> its tags."""
    return [t.strip() for t in text.replace("，", ",").split(",") if t.strip()]


# Zero-shot classification: a class's vector is the mean of its prompts' embeddings (the CLIP recipe).  Our own
# set of everyday Chinese photo descriptions; `{}` stands for the class name.
ZEROSHOT_TEMPLATES = (
    "一张{}的照片。",
    "一张{}的图片。",
    "这是一张{}的照片。",
    "照片里是{}。",
    "图片中有{}。",
    "一张清晰的{}的照片。",
    "一张模糊的{}的照片。",
    "{}的特写照片。",
    "一张小{}的照片。",
    "一张大{}的照片。",
    "一幅{}的画。",
    "{}。",
)


def read_labels(path):
    """Class names, one per line (blank lines skipped); a duplicate or a non-UTF-8 line is an error."""
    labels, seen = [], {}
    for line_no, text, problem in _file_lines(path, "labels file (one class name per line)"):
        label = text.strip() if text else ""
        if problem or "\t" in label:
            raise InputError(f"{path}:{line_no}: {problem or 'a class name may not contain a tab'}")
        if label in seen:
            raise InputError(f"{path}:{line_no}: class {label!r} already given on line {seen[label]}")
        seen[label] = line_no
        labels.append(label)
    if not labels:
        raise InputError(f"{path}: no class names")
    return labels


def read_templates(path):
    """Prompt templates, one per line, each with one `{}` for the class name."""
    templates = []
    for line_no, text, problem in _file_lines(path, "templates file (one prompt per line, with {})"):
        if problem or text.strip().count("{}") != 1:
            raise InputError(f"{path}:{line_no}: {problem or 'a template needs exactly one {} for the class name'}")
        templates.append(text.strip())
    if not templates:
        raise InputError(f"{path}: no templates")
    return templates


def _file_lines(path, what):
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")
    return text_lines(path)
