"""The streaming embedding pipeline: rows in, (row, text embedding, image embedding) out, in input order, with
bounded memory.

  main process: read + validate rows -> plan batches (which rows bring an image not seen recently)
  worker processes (`workers`): tokenise texts, decode + preprocess the new images, ahead of the model
  main process: encode new images (each distinct image once), encode texts batched by length, yield rows.
"""
import collections
import hashlib
from dataclasses import dataclass

import numpy as np

from ..data.tsv import BadRow
from .workers import prefetched, prepare_batch, start_pool


@dataclass
class _Plan:
    rows: list            # Row objects in input order
    keys: list            # image cache key per row
    new_keys: list        # keys whose image this batch decodes, in the order sent to the worker


def image_key(row):
    digest = hashlib.blake2b(row.image_b64.encode("ascii", "surrogateescape"), digest_size=16).digest()
    return row.image_id, digest


class _LRU(collections.OrderedDict):
    def __init__(self, capacity):
        super().__init__()
        self.capacity = capacity

    def touch(self, key, value=None):
        if key in self:
            self.move_to_end(key)
            if value is not None:
                self[key] = value
        else:
            self[key] = value
            while len(self) > self.capacity:
                self.popitem(last=False)


def _plan_batches(items, batch_size, scheduled, policy):
    """Group valid rows into batches, marking the images not scheduled within the last `capacity` images."""
    rows, keys, new_keys = [], [], []
    for item in items:
        if isinstance(item, BadRow):
            policy(item)
            continue
        key = image_key(item)
        if key not in scheduled and key not in new_keys:
            new_keys.append(key)
        scheduled.touch(key)
        rows.append(item)
        keys.append(key)
        if len(rows) == batch_size:
            yield _Plan(rows, keys, new_keys)
            rows, keys, new_keys = [], [], []
    if rows:
        yield _Plan(rows, keys, new_keys)


def _jobs(plans):
    """(plan, (its texts, the base64 of its new images)) per planned batch, for the workers."""
    for plan in plans:
        first_row = {k: r for r, k in zip(reversed(plan.rows), reversed(plan.keys))}
        yield plan, ([r.text for r in plan.rows], [first_row[k].image_b64 for k in plan.new_keys])


def iter_embeddings(rows, options, encoder, tokenizer, policy, stats, progress=None, pool=None):
    """Yield (row, text_embedding, image_embedding) for every good row of `rows` (Row / BadRow values, e.g.
    data.tsv.read_rows), in input order.

    Bad rows go to `policy`; `stats` (a Summary) accumulates the row and image counts.  Images are encoded per
    planned batch; texts wait for `text_sort_window` rows, are batched by length (`encode_texts_by_length`),
    and then the window's rows are yielded in input order.  `pool`: a worker pool to use (and keep); by
    default one is started and stopped here."""
    own_pool = pool is None
    pool = start_pool(options) if own_pool else pool
    depth = max(options.prefetch_batches, options.num_workers)
    scheduled = _LRU(options.image_cache_size)
    # Sized so that every image the planner counted as scheduled is still here when its rows are written (up
    # to `depth` batches ahead of the model, and a text window plus one batch behind it).
    embeddings = _LRU(options.image_cache_size + (depth + 1) * options.batch_size + options.text_sort_window)
    failed = _LRU(embeddings.capacity)
    counted = _RowCounter(rows)
    window = []  # (row, image key, token ids [L]) of rows whose texts are not encoded yet

    def flush():
        token_ids = [ids for _, _, ids in window]
        text_emb = encode_texts_by_length(encoder, token_ids, options.batch_size, tokenizer.pad_id)
        for (row, key, _), vec in zip(window, text_emb):
            embeddings.move_to_end(key)
            yield row, vec, embeddings[key]
        stats.written += len(window)
        if progress is not None:
            progress.update(len(window))
        window.clear()

    try:
        plans = _plan_batches(counted, options.batch_size, scheduled, policy)
        for plan, (ids, pixels, errors) in prefetched(pool, prepare_batch, _jobs(plans), depth):
            _encode_new_images(plan, pixels, errors, encoder, embeddings, failed, stats)
            for i, (row, key) in enumerate(zip(plan.rows, plan.keys)):
                if key in failed:
                    failed.move_to_end(key)
                    policy(BadRow(row.path, row.line, failed[key]))
                    if progress is not None:
                        progress.update(1)
                else:
                    embeddings.move_to_end(key)
                    window.append((row, key, ids[i]))
            if len(window) >= options.text_sort_window:
                yield from flush()
        if window:
            yield from flush()
    finally:
        if own_pool:
            pool.terminate()
            pool.join()
        stats.rows += counted.count
        stats.images_reused = stats.written - stats.images_encoded


def encode_texts_by_length(encoder, ids, batch_size, pad_id):
    """Embeddings of token-id rows (1-D, padded at the end with pad_id to any width), in the given order.  The
    rows are encoded in batches of similar length, each batch trimmed to its longest row: with captions of mixed
    lengths a batch in input order pads to its longest caption, and much of the text tower's work is padding."""
    width = max(len(row) for row in ids)
    ids = np.stack([np.pad(row, (0, width - len(row)), constant_values=pad_id) for row in ids])
    lengths = (ids != pad_id).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        emb = encoder.encode_text(ids[chunk, :max(1, int(lengths[chunk].max()))])
        if out is None:
            out = np.empty((len(ids), emb.shape[1]), emb.dtype)
        out[chunk] = emb
    return out


def _encode_new_images(plan, pixels, errors, encoder, embeddings, failed, summary):
    if not plan.new_keys:
        return
    good = [i for i in range(len(plan.new_keys)) if i not in errors]
    for i, reason in errors.items():
        line = plan.rows[plan.keys.index(plan.new_keys[i])].line
        failed.touch(plan.new_keys[i], f"bad image (first seen at line {line}): {reason}")
    if good:
        vectors = encoder.encode_image(pixels[good])
        for i, vec in zip(good, vectors):
            embeddings.touch(plan.new_keys[i], vec)
        summary.images_encoded += len(good)


class _RowCounter:
    def __init__(self, items):
        self.items = items
        self.count = 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item
