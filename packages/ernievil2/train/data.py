"""Training data: an index over TSV files/shards, deterministic multi-view samples, and a global-batch sampler.

Every random choice (epoch order, augmentation, tag order) is a function of (seed, epoch, sample index),
and each global batch is cut into equal per-rank slices, so a run does not depend on the number of ranks or
data workers, and a resumed run sees exactly the batches the uninterrupted one would have.
"""
import os

import numpy as np
import paddle

from ..data.images import DEFAULT_MAX_PIXELS, decode_base64_image
from ..data.prompts import TAG_PROMPT, TAG_SEPARATOR, split_tags, tag_text
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import augment_train, preprocess_eval
from ..data.tsv import BadRow, expand_sources, parse_row
from ..errors import BadRowError, ConfigError, InputError


class TsvIndex:
    """Byte offsets of the non-blank lines of one or more TSV files, for random access by row number."""

    def __init__(self, spec):
        self.files = expand_sources(spec, what="training data")
        offsets, file_ids, line_nos = [], [], []
        for fid, path in enumerate(self.files):
            pos = 0
            with open(path, "rb") as f:
                for line_no, raw in enumerate(f, 1):
                    if raw.strip():
                        offsets.append(pos)
                        file_ids.append(fid)
                        line_nos.append(line_no)
                    pos += len(raw)
        if not offsets:
            raise InputError(f"{', '.join(self.files)}: no rows")
        self.offsets = np.asarray(offsets, np.int64)
        self.file_ids = np.asarray(file_ids, np.int32)
        self.line_nos = np.asarray(line_nos, np.int64)
        self._handles = {}

    def __len__(self):
        return len(self.offsets)

    def location(self, i):
        return self.files[self.file_ids[i]], int(self.line_nos[i])

    def read(self, i):
        """(path, line number, raw bytes without the newline) of row i."""
        path, line = self.location(i)
        handle = self._handles.get(path)
        if handle is None:  # opened lazily, so every data-loader worker has its own file handles
            handle = self._handles[path] = open(path, "rb")
        handle.seek(int(self.offsets[i]))
        return path, line, handle.readline().rstrip(b"\r\n")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def read_tags_file(path):
    """`image_id \\t tag1,tag2,...` lines -> {image_id: [tags]}."""
    tags = {}
    if not os.path.isfile(path):
        raise InputError(f"{path}: data.tags_file not found (expected image_id \\t tags lines)")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 2:
                raise InputError(f"{path}:{line_no}: expected 2 tab-separated columns (image_id, tags), "
                                 f"found {len(cols)}")
            tags[cols[0].strip()] = split_tags(cols[1])
    return tags


class MultiViewDataset(paddle.io.Dataset):
    """Item (epoch, index) -> the sample's views: two augmented images, caption ids, object-tag ids.

    augment: True (the release's recipe), False (both views preprocessed as at test time), or a dict of
    `augment_train` options, e.g. {flip_p: 0, gray_p: 0} when captions name sides and colours.

    A bad row raises (on_bad_row=error) or is replaced by the next good row in file order (skip), counted in
    the sample's `skipped` field and appended to `bad_row_log`."""

    def __init__(self, index, vocab_file, seed, image_size=224, max_text_len=48, augment=True,
                 tags=None, tag_prompt=TAG_PROMPT, tag_separator=TAG_SEPARATOR, shuffle_tags=True, max_tags=0,
                 on_bad_row="error", bad_row_log=None, max_image_pixels=DEFAULT_MAX_PIXELS):
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
        views = np.zeros((3, self.image_size, self.image_size), np.float32)
        ids = np.asarray([self.tokenizer.cls_id, self.tokenizer.sep_id], np.int64)
        return {"image_view1": views, "image_view2": views, "caption_ids": ids, "tag_ids": ids,
                "skipped": np.int64(0), "bad_index": np.int64(j)}

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
        try:
            rgb = decode_base64_image(row.image_b64, max_pixels=self.max_image_pixels)
        except ValueError as e:
            raise BadRowError(BadRow(path, line, str(e))) from None
        if self.augment:
            options = self.augment if isinstance(self.augment, dict) else {}
            view1 = augment_train(rgb, rng, self.image_size, **options)
            view2 = augment_train(rgb, rng, self.image_size, **options)
        else:
            view1 = view2 = preprocess_eval(rgb, self.image_size)
        tags = split_tags(row.tags) if row.tags else self.tags.get(row.image_id, [])
        if tags:
            if self.shuffle_tags:
                tags = [tags[k] for k in rng.permutation(len(tags))]
            if self.max_tags:
                tags = tags[: self.max_tags]
            tag_sequence = tag_text(tags, self.tag_prompt, self.tag_separator)
        else:
            tag_sequence = row.text  # no tags for this image: its caption stands in for the tag view
        return {"image_view1": view1, "image_view2": view2,
                "caption_ids": np.asarray(self.tokenizer.encode(row.text, self.max_text_len), np.int64),
                "tag_ids": np.asarray(self.tokenizer.encode(tag_sequence, self.max_text_len), np.int64)}

    def _log_bad(self, bad):
        if self.bad_row_log:
            # One short O_APPEND write per line: safe with several workers appending to the same file.
            with open(self.bad_row_log, "a", encoding="utf-8") as f:
                f.write(f"{bad}\n")


def collate_samples(samples, pad_id=0):
    """Stack views; pad caption and tag ids to the longest in this batch."""
    out = {key: np.stack([s[key] for s in samples]) for key in ("image_view1", "image_view2")}
    for key in ("caption_ids", "tag_ids"):
        length = max(len(s[key]) for s in samples)
        ids = np.full((len(samples), length), pad_id, np.int64)
        for row, s in enumerate(samples):
            ids[row, : len(s[key])] = s[key]
        out[key] = ids
    out["skipped"] = np.asarray(sum(int(s["skipped"]) for s in samples), np.int64)
    out["bad_index"] = np.asarray([int(s["bad_index"]) for s in samples], np.int64)
    return out


class GlobalBatchSampler(paddle.io.BatchSampler):
    """Yields this rank's slice of each global batch as [(epoch, index), ...], from a start position onward.

    Epoch e visits the rows in the order of a permutation seeded by (seed, e); its global batches are
    consecutive runs of `batch_size * world_size` rows (the remainder is dropped), and rank r takes rows
    [r * batch_size, (r + 1) * batch_size) of each."""

    def __init__(self, num_rows, batch_size, world_size=1, rank=0, seed=0, shuffle=True, start_batch=0):
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_rows // self.global_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(f"the training set has {num_rows} rows, fewer than one global batch "
                             f"({batch_size} per rank x {world_size} ranks = {self.global_batch})")
        self.start_batch = start_batch
        self._order = (None, None)

    def epoch_order(self, epoch):
        if self._order[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.num_rows)
                     if self.shuffle else np.arange(self.num_rows))
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self):
        g = self.start_batch
        while True:
            epoch, b = divmod(g, self.batches_per_epoch)
            order = self.epoch_order(epoch)
            start = b * self.global_batch + self.rank * self.batch_size
            yield [(epoch, int(i)) for i in order[start:start + self.batch_size]]
            g += 1

    def __len__(self):
        return 1 << 40  # endless: the trainer stops by step count
