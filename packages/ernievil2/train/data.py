"""Training samples: deterministic multi-view samples of rows (data.row_index) and their collation.

Every random choice (augmentation, tag order) is a function of (seed, epoch, sample index), so a run does not
depend on the number of ranks or data workers (the order of rows: train.order).
"""
import hashlib

import numpy as np
import paddle

from ..data.images import DEFAULT_MAX_PIXELS, decode_base64_image, decode_base64_image_reduced
from ..data.prompts import TAG_PROMPT, TAG_SEPARATOR, split_tags, tag_text
from ..data.tags import read_tags_file  # noqa: F401  (the trainer reads data.tags_file through this name)
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import COLOUR_DRAWS, apply_colour, draw_view, preprocess_eval, resize_reduced
from ..data.tsv import BadRow, parse_row
from ..errors import BadRowError


class MultiViewDataset(paddle.io.Dataset):
    """Item (epoch, index) -> the sample's views: two augmented images, caption ids, object-tag ids.

    augment: True (the release's recipe), False (both views preprocessed as at test time), or a dict of
    `augment_train` options, e.g. {flip_p: 0, gray_p: 0} when captions name sides and colours.

    A bad row raises (on_bad_row=error) or is replaced by the next good row in file order (skip), counted in
    the sample's `skipped` field and appended to `bad_row_log`.

    Augmented views of a JPEG are cut from a decode at the smallest DCT scale (1/2, 1/4, 1/8) whose short side
    still has image_size pixels, resized once for both views (transforms.resize_reduced): the same crop boxes,
    flips and colour draws as from the full decode, each view pixel at the same place in the image; only the
    resampling differs (block averaging before a bilinear step of < 2x, instead of a bilinear step that skips
    pixels).  augment=False keeps the exact evaluation preprocessing of the full decode.

    colour_on_device: an augmented view is its uint8 crop [H, W, 3] and its colour draws (`image_view1_colour`,
    float64), which train.view_colour turns into the view on the training device, instead of the float32 view."""

    def __init__(self, index, vocab_file, seed, image_size=224, max_text_len=48, augment=True,
                 tags=None, tag_prompt=TAG_PROMPT, tag_separator=TAG_SEPARATOR, shuffle_tags=True, max_tags=0,
                 on_bad_row="error", bad_row_log=None, max_image_pixels=DEFAULT_MAX_PIXELS,
                 colour_on_device=False):
        self.index = index
        self.vocab_file = vocab_file
        self.tokenizer = ErnieTokenizer.from_file(vocab_file)
        self.seed = seed
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.augment = augment
        self.tags = tags or {}
        self.tag_prompt = tag_prompt
        self.tag_separator = tag_separator
        self.shuffle_tags = shuffle_tags
        self.max_tags = max_tags
        self.on_bad_row = on_bad_row
        self.bad_row_log = bad_row_log
        self.max_image_pixels = max_image_pixels
        self.colour_on_device = bool(colour_on_device and augment)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        epoch, i = item
        for skipped in range(min(len(self.index), 1000)):
            j = (i + skipped) % len(self.index)
            try:
                sample = self.make_sample(epoch, j)
            except BadRowError as e:
                if self.on_bad_row == "error":
                    # Raising inside a data-loader worker yields an unreadable chain of tracebacks; instead the
                    # batch carries the row's number and the trainer re-reads it to raise a clean error.
                    return self._placeholder(j)
                self._log_bad(e.bad)
                continue
            sample["skipped"] = np.int64(skipped)
            sample["bad_index"] = np.int64(-1)
            return sample
        raise RuntimeError(f"{self.index.files[0]}: 1000 consecutive bad rows; check the training data")

    def _placeholder(self, j):
        size = self.image_size
        ids = np.asarray([self.tokenizer.cls_id, self.tokenizer.sep_id], np.int64)
        unique = np.int64(-1 - j)  # never equal to another row's key
        if self.colour_on_device:  # stacked with the batch's other views: the same layout
            crop, draws = np.zeros((size, size, 3), np.uint8), np.zeros(len(COLOUR_DRAWS))
            views = {"image_view1": crop, "image_view2": crop, "image_view1_colour": draws, "image_view2_colour": draws}
        else:
            views = dict.fromkeys(("image_view1", "image_view2"), np.zeros((3, size, size), np.float32))
        return {**views, "caption_ids": ids, "tag_ids": ids, "image_key": unique, "caption_key": unique,
                "tag_key": unique, "skipped": np.int64(0), "bad_index": np.int64(j)}

    def raise_bad_row(self, epoch, j):
        """Re-read row j in this process and raise its BadRowError (see __getitem__)."""
        self.make_sample(epoch, j)
        raise RuntimeError(f"row {j} failed in a data-loader worker but reads fine now")

    def make_sample(self, epoch, i):
        path, line, raw = self.index.read(i)
        row = parse_row(raw, path, line)
        if isinstance(row, BadRow):
            raise BadRowError(row)
        rng = np.random.default_rng([self.seed, epoch, i])
        size = self.image_size
        try:
            if self.augment:
                # Decoded at the smallest JPEG scale that still covers the crop, resized once for both views.
                rgb, reduction, full_shape = decode_base64_image_reduced(row.image_b64, size, self.max_image_pixels)
                resized = resize_reduced(rgb, reduction, full_shape, size)
            else:
                rgb = decode_base64_image(row.image_b64, max_pixels=self.max_image_pixels)
                views = dict.fromkeys(("image_view1", "image_view2"), preprocess_eval(rgb, size))
        except ValueError as e:
            raise BadRowError(BadRow(path, line, str(e))) from None
        if self.augment:
            options, views = (self.augment if isinstance(self.augment, dict) else {}), {}
            for key in ("image_view1", "image_view2"):
                crop, draws = draw_view(resized, rng, size, **options)
                if self.colour_on_device:
                    views[key], views[f"{key}_colour"] = crop, draws
                else:
                    views[key] = apply_colour(crop, draws)
        tags = split_tags(row.tags) if row.tags else self.tags.get(row.image_id, [])
        if tags:
            if self.shuffle_tags:
                tags = [tags[k] for k in rng.permutation(len(tags))]
            if self.max_tags:
                tags = tags[: self.max_tags]
            tag_sequence = tag_text(tags, self.tag_prompt, self.tag_separator)
        else:
            tag_sequence = row.text  # no tags for this image: its caption stands in for the tag view
        return {**views,
                "caption_ids": np.asarray(self.tokenizer.encode(row.text, self.max_text_len), np.int64),
                "tag_ids": np.asarray(self.tokenizer.encode(tag_sequence, self.max_text_len), np.int64),
                # identities for loss.mask_duplicates: rows of one image, or with one text, are not negatives
                "image_key": identity_key(row.image_id), "caption_key": identity_key(row.text.strip()),
                "tag_key": identity_key(tag_sequence.strip())}

    def _log_bad(self, bad):
        if self.bad_row_log:
            # One short O_APPEND write per line: safe with several workers appending to the same file.
            with open(self.bad_row_log, "a", encoding="utf-8") as f:
                f.write(f"{bad}\n")


KEYS = ("image_key", "caption_key", "tag_key")
VIEW_KEYS = ("image_view1", "image_view2", "image_view1_colour", "image_view2_colour")


def identity_key(text):
    """A stable 64-bit key of a string (the same in every process and run)."""
    return np.int64(int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little",
                                   signed=True))


def collate_samples(samples, pad_id=0):
    """Stack views (and their colour draws); pad caption and tag ids to the longest in this batch."""
    out = {key: np.stack([s[key] for s in samples]) for key in VIEW_KEYS if key in samples[0]}
    for key in ("caption_ids", "tag_ids"):
        length = max(len(s[key]) for s in samples)
        ids = np.full((len(samples), length), pad_id, np.int64)
        for row, s in enumerate(samples):
            ids[row, : len(s[key])] = s[key]
        out[key] = ids
    for key in KEYS:
        out[key] = np.asarray([s[key] for s in samples], np.int64)
    out["skipped"] = np.asarray(sum(int(s["skipped"]) for s in samples), np.int64)
    out["bad_index"] = np.asarray([int(s["bad_index"]) for s in samples], np.int64)
    return out
