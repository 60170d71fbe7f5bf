"""The texts the model reads besides captions: the object-tag prompt of the training views."""
from typing import Sequence

# Object-tag view of an image: this prompt + the tags joined by TAG_SEPARATOR ("图片中包含红色汽车, 蓝天").
TAG_PROMPT = "图片中包含"
TAG_SEPARATOR = ", "


def tag_text(tags: Sequence[str], prompt: str = TAG_PROMPT, separator: str = TAG_SEPARATOR) -> str:
    """The object-tag view's text, e.g. ``"图片中包含红色汽车, 蓝天, 绿树"``."""
    return prompt + separator.join(tags)


def split_tags(text):
    """A tag column (`红色汽车,蓝天` or with full-width commas) -> its tags."""
    return [t.strip() for t in text.replace("，", ",").split(",") if t.strip()]
